"""The ``monitor`` command: argument parsing, text and ``--json`` output, offline tools."""
