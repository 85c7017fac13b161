"""Parameter checks shared by the read APIs (``dashboard``, ``patterns``).

Each check returns the value or raises the caller's error class (a ``ValueError``) with a
message that starts with the parameter's name. Types are checked, not coerced: a string
where a date is expected, or ``"false"`` where a bool is (truthy, so it would silently
mean True), is refused rather than guessed at.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

# The earliest day a read may name: the earliest partition start (AGG_PIPELINE_START_DATE
# is 1970 or later), and far enough from date.min that `day - timedelta(days=366)` cannot
# overflow.
EARLIEST_DAY = date(1970, 1, 1)
EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TEXT = 1000


def _got(value: object) -> str:
    return f"got {value!r} ({type(value).__name__})"


def text(name: str, value: object, error: type[ValueError]) -> str:
    """A non-empty string of at most MAX_TEXT characters, without NUL (PostgreSQL text
    cannot hold one)."""
    if not isinstance(value, str) or not value:
        raise error(f"{name} must be a non-empty string, {_got(value)}")
    if "\x00" in value:
        raise error(f"{name} must not contain NUL (\\x00) characters, got {value!r}")
    if len(value) > MAX_TEXT:
        raise error(f"{name} must be at most {MAX_TEXT} characters, got {len(value)}")
    return value


def flag(name: str, value: object, error: type[ValueError]) -> bool:
    """A real bool: ``"false"`` is a non-empty string, hence truthy."""
    if not isinstance(value, bool):
        raise error(f"{name} must be True or False, {_got(value)}")
    return value


def day(name: str, value: object, error: type[ValueError]) -> date:
    """A calendar date (not a datetime, whose time would be dropped), 1970-01-01 or later."""
    if not isinstance(value, date) or isinstance(value, datetime):
        raise error(f"{name} must be a datetime.date, {_got(value)}")
    if value < EARLIEST_DAY:
        raise error(f"{name} must be {EARLIEST_DAY} or later, got {value}")
    return value


def instant(name: str, value: object, error: type[ValueError]) -> datetime:
    """A timezone-aware datetime, 1970-01-01 UTC or later. Naive ones are refused: the
    database would read them in its session time zone."""
    if not isinstance(value, datetime):
        raise error(f"{name} must be a timezone-aware datetime, {_got(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise error(f"{name} must be timezone-aware (e.g. tzinfo=UTC), got naive {value}")
    if value < EARLIEST_INSTANT:
        raise error(f"{name} must be {EARLIEST_INSTANT.isoformat()} or later, got {value}")
    return value
