"""monitor: watch news feeds and alert once per story."""

__version__ = "0.1.0"
