"""Persistent state behind the ``Store`` protocol (SQLite by default, PostgreSQL to share)."""

from monitor.store.base import DeliveryStatus, Store, StoredStory

__all__ = ["DeliveryStatus", "Store", "StoredStory"]
