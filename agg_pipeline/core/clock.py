"""The current time, in one place, so tests can freeze it (as sensor tests do)."""

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)
