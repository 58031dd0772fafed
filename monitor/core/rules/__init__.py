"""Rules: the model, loading and validation, expressions, terms, matching, explanations.

Each module imports only modules listed below it (no cycles)::

    load.py     rule files' text → RuleSet (parse_rules): pydantic + yamlpos, every problem
                with file:line:column
                  imports model, expr, terms
    match.py    RuleSet → Matcher: prematch (the text), match (+ scope, corroboration and
                the rule's action), explain; compile_rules
                  imports model, explain, expr, regex, terms
    model.py    Rule, RuleSet, ActorDef: the validated, frozen data
                  imports expr, terms
    explain.py  explanation data (Condition, RuleExplanation), its JSON shape, the reason line
                  imports expr
    expr.py     the condition tree (Term, Actor, And, Or, Not, Near) and the ``expr:`` language
                  imports terms
    terms.py    tokens, their keys, and parsing one term
                  imports regex
    regex.py    rule regexes on RE2 (linear time): checks with a fix, compilation, the
                per-story budget (REGEX_BUDGET)

``load`` also uses ``monitor.core.yamlpos`` and ``monitor.core.schedule`` (cron lines).
Reading the files from disk is the shell's (``monitor.shell.rulefiles.load_rules``); the
terminal rendering of explanations is ``monitor.cli.explain``. A term or an expression that
cannot be parsed raises a ``RuleSyntaxError`` (``TermError``, ``ExprError``); the loader
reports it, with every other problem, in one ``RulesError``.
"""
