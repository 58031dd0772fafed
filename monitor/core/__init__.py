"""The pure core: every decision monitor takes, as functions over frozen dataclasses.

Nothing here touches the network, the disk's state, the clock or an event loop: ``now``
is an argument. ``make lint`` checks the boundary with an import contract (no aiohttp,
asyncpg, sqlite3, slack_sdk, aiosmtplib, ``monitor.shell``, ``monitor.store`` or
``monitor.notify`` below this package).
"""
