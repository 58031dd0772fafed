"""The I/O shell: everything that waits on the outside world (network, clock, event loop).

It gathers the inputs of the core's decisions, calls them, and acts on what they return.
"""
