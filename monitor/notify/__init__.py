"""Notifiers: deliver rendered alerts to Slack, email or a JSON-lines file."""
