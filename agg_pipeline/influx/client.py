"""InfluxDB 2.x through the official ``influxdb-client``: queries, writes, buckets, tasks.

- Queries use ``query_raw`` and parse InfluxDB's annotated CSV as it streams (measured
  ~20x faster than ``query_data_frame``), into one DataFrame per ``yield``. An error
  table inside a 200 response raises ``InfluxError`` with InfluxDB's message.
- Writes send line protocol in batches with retries: 3 attempts, exponential backoff with
  jitter, honouring ``Retry-After`` on 429 / 503. A write that finally fails raises with
  InfluxDB's message - never a silent ``False``.
- URL, token and org come from the environment (``INFLUXDB_URL``, ``INFLUXDB_TOKEN``,
  ``INFLUXDB_ORG``) through Dagster's ``EnvVar``: never stored in run config or logged.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd
from pydantic import Field

if TYPE_CHECKING:  # imported when a client is made: influxdb_client is slow to import
    from influxdb_client import InfluxDBClient


class InfluxError(RuntimeError):
    """InfluxDB refused or failed a request; the message is InfluxDB's."""


@dataclass
class Table:
    """One annotation block: every table of a result that shares its columns."""

    result: str
    columns: list[str]
    datatypes: list[str]
    frame: pd.DataFrame


_NUMERIC = {"double": "float64", "long": "Int64", "unsignedLong": "UInt64"}


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer = ""
    for chunk in chunks:
        buffer += decoder.decode(chunk)
        *complete, buffer = buffer.split("\n")
        yield from complete
    buffer += decoder.decode(b"", final=True)
    if buffer:
        yield buffer


def parse_annotated_csv(chunks: Iterable[bytes]) -> Iterator[Table]:
    """Annotation blocks of InfluxDB's annotated CSV, as the bytes arrive.

    Each block (``#datatype``, ``#group``, ``#default``, the header row, then the rows of
    one or more tables) is parsed by pandas' C reader in one go - the rows of an answer
    are numerous, so no per-row Python. An error table (header ``error``, ``reference``)
    raises ``InfluxError`` with InfluxDB's message, even inside a 200 response.
    """
    datatypes: list[str] = []
    defaults: list[str] = []
    header: list[str] | None = None
    rows: list[str] = []

    def flush() -> Iterator[Table]:
        if header is None:
            return
        if header[:2] == ["error", "reference"]:
            first = next(csv.reader(rows[:1]), ["", "unknown error"])
            raise InfluxError(f"InfluxDB query error: {first[1] if len(first) > 1 else first}")
        if not rows:
            return
        types = dict(zip(header, datatypes[: len(header)] if datatypes else [], strict=False))
        numeric = {c: _NUMERIC[t] for c, t in types.items() if t in _NUMERIC}
        frame = pd.read_csv(
            io.StringIO("\n".join(rows)),
            header=None,
            names=["", *header],
            dtype={c: numeric.get(c, str) for c in ["", *header]},
            keep_default_na=False,
            na_values={c: [""] for c in numeric},
        )
        r = header.index("result") if "result" in header else None
        default = defaults[r] if r is not None and r < len(defaults) else ""
        results = (
            frame["result"].where(frame["result"] != "", default or "_result")
            if (r is not None)
            else pd.Series("_result", index=frame.index)
        )
        for name, part in frame.groupby(results, sort=False):
            yield Table(str(name), header, datatypes, part)

    for line in _lines(chunks):
        line = line.rstrip("\r")
        if not line or not line.strip(","):
            continue  # blank line between tables
        if line.startswith("#"):
            if header is not None:  # a new annotation block: the previous one is complete
                yield from flush()
                header, rows, defaults, datatypes = None, [], [], []
            cells = next(csv.reader([line]))
            if cells[0] == "#datatype":
                datatypes = cells[1:]
            elif cells[0] == "#default":
                defaults = cells[1:]
            continue
        if header is None:
            header = next(csv.reader([line]))[1:]
            continue
        rows.append(line)
    yield from flush()


def tables_to_frames(tables: Iterable[Table]) -> dict[str, pd.DataFrame]:
    """One DataFrame per result name, columns typed by the ``#datatype`` annotations."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for t in tables:
        frame = t.frame.drop(columns=["", "result", "table"], errors="ignore").copy()
        for col, dtype in zip(t.columns, t.datatypes, strict=False):
            if col not in frame:
                continue
            if dtype == "boolean":
                frame[col] = frame[col].map({"true": True, "false": False})
            elif dtype.startswith("dateTime"):
                # Times repeat (window bounds, minutes across series): parse each once.
                codes, uniques = pd.factorize(frame[col], use_na_sentinel=True)
                parsed = pd.DatetimeIndex(
                    pd.to_datetime(pd.Series(uniques).where(pd.Series(uniques) != ""), utc=True,
                                   format="ISO8601")
                )  # fmt: skip
                frame[col] = parsed.take(codes, allow_fill=True, fill_value=pd.NaT)
        parts.setdefault(t.result, []).append(frame.reset_index(drop=True))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}


class InfluxResource(dg.ConfigurableResource):
    """InfluxDB 2.x connection. ``url`` unset: InfluxDB is not configured (source or sink
    features that need it fail with a clear message; the rest runs without it)."""

    url: str | None = Field(default=None, description="e.g. http://localhost:8086")
    token: str | None = Field(default=None, description="API token (from INFLUXDB_TOKEN).")
    org: str | None = Field(default=None, description="Organization name.")
    timeout_ms: int = Field(default=60_000, description="Per-request timeout.")
    gzip: bool = Field(default=True, description="Compress requests and responses.")
    write_attempts: int = Field(default=3, ge=1, le=10)
    write_batch_lines: int = Field(default=5_000, ge=1)
    backoff_base_s: float = Field(default=1.0, ge=0, description="First retry waits ~this.")

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @classmethod
    def from_env(cls) -> InfluxResource:
        """From ``INFLUXDB_URL`` / ``_TOKEN`` / ``_ORG`` at call time (unset: not enabled)."""
        return cls(**{k: os.environ.get(f"INFLUXDB_{k.upper()}") for k in ("url", "token", "org")})

    def health(self, timeout_s: float = 2.0) -> tuple[bool, str]:
        """InfluxDB's ``/health`` (no token needed): (passing, what it said or the error).
        Never raises: status reports ask this when InfluxDB may well be down."""
        if not self.url:
            return False, "not configured (INFLUXDB_URL unset)"
        url = self.url.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
                body = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return False, f"HTTP {exc.code} from {url}"
        except (OSError, ValueError) as exc:  # refused, timeout, DNS, not JSON
            return False, f"{type(exc).__name__}: {exc}"
        status = str(body.get("status", "?"))
        return status == "pass", f"{status} ({body.get('version', '?')})"

    def _client(self) -> InfluxDBClient:
        from influxdb_client import InfluxDBClient

        if not self.url:
            raise InfluxError(
                "InfluxDB is not configured: set INFLUXDB_URL, INFLUXDB_TOKEN, INFLUXDB_ORG"
            )
        # retries=False: writes are retried here, with Retry-After and a final clear error.
        return InfluxDBClient(
            url=self.url,
            token=self.token or "",
            org=self.org or "",
            timeout=self.timeout_ms,
            enable_gzip=self.gzip,
            retries=False,
        )

    # ---------------------------------------------------------------------- queries
    def query_frames(self, flux: str) -> dict[str, pd.DataFrame]:
        from influxdb_client.rest import ApiException

        with self._client() as client:
            try:
                response = client.query_api().query_raw(flux, org=self.org)
                return tables_to_frames(parse_annotated_csv(response.stream(64 * 1024)))
            except ApiException as exc:
                raise InfluxError(_api_message(exc)) from None
            except InfluxError:
                raise
            except Exception as exc:  # connection reset mid-stream and the like
                raise InfluxError(f"InfluxDB query failed: {type(exc).__name__}: {exc}") from exc

    # ----------------------------------------------------------------------- writes
    def write_lines(self, bucket: str, lines: list[str], precision: str = "s") -> int:
        """Write line protocol in batches; raises ``InfluxError`` when a batch finally fails."""
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.rest import ApiException

        written = 0
        with self._client() as client:
            api = client.write_api(write_options=SYNCHRONOUS)
            for i in range(0, len(lines), self.write_batch_lines):
                batch = "\n".join(lines[i : i + self.write_batch_lines])
                for attempt in range(1, self.write_attempts + 1):
                    try:
                        api.write(
                            bucket=bucket, org=self.org, record=batch, write_precision=precision
                        )
                        break
                    except ApiException as exc:
                        retryable = exc.status in (429, 500, 502, 503, 504)
                        if not retryable or attempt == self.write_attempts:
                            raise InfluxError(
                                f"write to bucket {bucket!r} failed after {attempt} "
                                f"attempt(s): {_api_message(exc)}"
                            ) from None
                        time.sleep(self._wait(attempt, exc))
                    except Exception as exc:  # connection refused / reset
                        if attempt == self.write_attempts:
                            raise InfluxError(
                                f"write to bucket {bucket!r} failed after {attempt} "
                                f"attempt(s): {type(exc).__name__}: {exc}"
                            ) from exc
                        time.sleep(self._wait(attempt, None))
                written += min(self.write_batch_lines, len(lines) - i)
        return written

    def _wait(self, attempt: int, exc: Exception | None) -> float:
        retry_after = None
        if exc is not None and getattr(exc, "headers", None):
            value = exc.headers.get("Retry-After")
            try:
                retry_after = float(value) if value is not None else None
            except ValueError:
                retry_after = None
        if retry_after is not None:
            return retry_after
        return self.backoff_base_s * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)

    # ---------------------------------------------------------------------- buckets
    def ensure_bucket(self, name: str, retention_days: float | None, apply: bool = False) -> str:
        """Create ``name`` with the retention rule unless it exists: 'created', 'exists'.

        An existing bucket whose retention differs from ``retention_days`` is reported
        ('retention differs: ...') and, with ``apply``, corrected ('retention corrected:
        ...'). ``retention_days`` None: created without expiry, an existing bucket's
        retention is not compared (not ours to manage)."""
        from influxdb_client import BucketRetentionRules
        from influxdb_client.rest import ApiException

        wanted = int(retention_days * 86400) if retention_days else 0
        rules = [BucketRetentionRules(type="expire", every_seconds=wanted)] if wanted else []
        with self._client() as client:
            api = client.buckets_api()
            try:
                found = api.find_bucket_by_name(name)
                if found is None:
                    api.create_bucket(bucket_name=name, retention_rules=rules, org=self.org)
                    return "created"
                have = _expiry_seconds(found.retention_rules)
                if retention_days is None or have == wanted:
                    return "exists"
                change = f"{_days(have)} -> {_days(wanted)}"
                if not apply:
                    return f"retention differs: {change} (run with --apply to correct it)"
                found.retention_rules = rules
                api.update_bucket(found)
                return f"retention corrected: {change}"
            except ApiException as exc:
                raise InfluxError(f"bucket {name!r}: {_api_message(exc)}") from None

    def delete_bucket(self, name: str) -> bool:
        """Delete bucket ``name`` if it exists (the live tests' and bench's clean-up);
        whether it existed."""
        from influxdb_client.rest import ApiException

        with self._client() as client:
            api = client.buckets_api()
            try:
                found = api.find_bucket_by_name(name)
                if found is not None:
                    api.delete_bucket(found)
                return found is not None
            except ApiException as exc:
                raise InfluxError(f"bucket {name!r}: {_api_message(exc)}") from None

    # ------------------------------------------------------------------------ tasks
    def list_tasks(self, prefix: str = "aggregate_") -> list[dict]:
        from influxdb_client.rest import ApiException

        with self._client() as client:
            try:
                tasks = client.tasks_api().find_tasks()
            except ApiException as exc:
                raise InfluxError(f"listing tasks: {_api_message(exc)}") from None
            return [
                {"id": t.id, "name": t.name, "status": t.status, "every": t.every}
                for t in tasks
                if t.name.startswith(prefix)
            ]

    def set_task_status(self, task_id: str, status: str) -> None:
        from influxdb_client.rest import ApiException

        with self._client() as client:
            api = client.tasks_api()
            try:
                task = api.find_task_by_id(task_id)
                task.status = status
                api.update_task(task)
            except ApiException as exc:
                raise InfluxError(f"task {task_id}: {_api_message(exc)}") from None

    def delete_task(self, task_id: str) -> None:
        from influxdb_client.rest import ApiException

        with self._client() as client:
            try:
                client.tasks_api().delete_task(task_id)
            except ApiException as exc:
                raise InfluxError(f"task {task_id}: {_api_message(exc)}") from None


def _expiry_seconds(rules: list | None) -> int:
    """A bucket's expiry in seconds; 0: kept forever (no rule, or everySeconds 0)."""
    for rule in rules or []:
        if getattr(rule, "type", "expire") == "expire":
            return int(getattr(rule, "every_seconds", 0) or 0)
    return 0


def _days(seconds: int) -> str:
    return f"{seconds / 86400:g} d" if seconds else "forever"


def _api_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            data = json.loads(body)
            return f"HTTP {exc.status}: {data.get('message') or data}"
        except (ValueError, TypeError):
            return f"HTTP {exc.status}: {str(body)[:300]}"
    return f"HTTP {exc.status}: {exc.reason}"
