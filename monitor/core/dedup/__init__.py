"""Story deduplication: title features and the recent-story index of clusters.

``features``: what one story's text says (normalised title, tokens, names, lead), computed
off the event loop, and the engine's ``DedupSettings``. ``index``: the recent-story index
(``StoryIndex``) and its decisions ``New`` / ``SameStory`` / ``Seen``. ``index`` imports
``features``, never the other way round.
"""
