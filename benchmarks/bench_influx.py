"""The old PatternAggregateClient's performance criteria, on the pattern bucket.

    python -m benchmarks.bench_influx [--reps 5] [--json PATH]

Story AI5.2's numbers: a single write < 10 ms, a batch of 100 < 100 ms, 1000 records
< 1 s; reading 7 / 30 / 90 days < 0.1 / 0.5 / 1 s. Writes go through the sink's line
protocol (``pattern_lines``) and ``InfluxResource.write_lines`` (influxdb-client, gzip);
reads through ``InfluxPatterns.query`` (Flux ``pivot``, annotated CSV parsed, models
validated), one detector type per query as the old ``query_*_daily`` helpers did, the
slowest of the six types reported.

Where: with ``INFLUXDB_URL`` / ``_TOKEN`` / ``_ORG`` set, against that InfluxDB (a
temporary bucket, deleted after); otherwise against the local protocol server of the test
suite (``agg_pipeline_tests/influx_server.py``: real HTTP and client, but pandas, not
InfluxDB's engine, answers), and the figures say so.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

from pytest_httpserver import HTTPServer

from agg_pipeline.influx import sink as influx_sink
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.serving import patterns, patterns_influx
from agg_pipeline_tests.influx_server import FakeInflux

TARGETS = {
    "single_write_s": 0.010,
    "batch_100_write_s": 0.100,
    "batch_1000_write_s": 1.0,
    "read_7_days_s": 0.1,
    "read_30_days_s": 0.5,
    "read_90_days_s": 1.0,
}
PER_DAY = 60  # aggregates a day: 10 of each detector type (a home's entities)
LAST = date(2026, 11, 30)


def _lines(aggregates: list) -> list[str]:
    by_type: dict[str, list[dict]] = {}
    for a in aggregates:
        name = next(k for k, d in patterns.DETECTORS.items() if isinstance(a, d.model))
        by_type.setdefault(name, []).append(a.model_dump())
    out = []
    for name, rows in by_type.items():
        out += influx_sink.pattern_lines(patterns.DETECTORS[name], rows)
    return out


@contextmanager
def _target() -> Iterator[tuple[InfluxResource, str, str]]:
    """(resource, bucket, where): a live InfluxDB's temporary bucket, or the local server."""
    live = InfluxResource.from_env()
    if live.enabled:
        bucket = f"agg_pipeline_bench_{uuid.uuid4().hex[:8]}"
        live.ensure_bucket(bucket, None)  # no expiry: the 90 days are in the past
        try:
            yield live, bucket, f"live InfluxDB at {live.url}"
        finally:
            live.delete_bucket(bucket)
        return
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the local server's request log
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        fake = FakeInflux(server)
        fake.buckets["pattern_aggregates_daily"] = {"id": "01", "name": "pattern_aggregates_daily"}
        resource = InfluxResource(url=fake.url, token=fake.token, org=fake.org)
        yield (
            resource,
            "pattern_aggregates_daily",
            "the local InfluxDB 2.x protocol server of the tests (pandas answers, not "
            "InfluxDB's engine): client, HTTP and parsing costs, not InfluxDB's",
        )
    finally:
        server.clear()
        if server.is_running():
            server.stop()


def _median(fn: Callable[[], object], reps: int) -> float:
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(reps: int = 5) -> dict:
    with _target() as (influx, bucket, where):
        # Writes first, into the empty bucket: the local server merges every write into
        # all points it holds (pandas), a cost InfluxDB's storage engine does not have.
        fresh = _lines(patterns.sample_aggregates(1000, date(2026, 12, 1)))
        figures = {
            "single_write_s": _median(lambda: influx.write_lines(bucket, fresh[:1]), reps * 4),
            "batch_100_write_s": _median(lambda: influx.write_lines(bucket, fresh[:100]), reps),
            # The seed's "write 1000 records": from models to InfluxDB, line protocol included.
            "batch_1000_write_s": _median(
                lambda: influx.write_lines(
                    bucket, _lines(patterns.sample_aggregates(1000, date(2026, 12, 2)))
                ),
                reps,
            ),
        }
        history = [
            a for i in range(90) for a in patterns.sample_aggregates(PER_DAY, LAST - timedelta(i))
        ]
        influx.write_lines(bucket, _lines(history))  # 90 days to read back
        reader = patterns_influx.InfluxPatterns(influx, bucket)
        rows = {}
        for days in (7, 30, 90):
            start = LAST - timedelta(days - 1)
            per_type = {
                name: _median(lambda n=name, s=start: reader.query(n, s, LAST), reps)
                for name in patterns.DETECTORS
            }
            figures[f"read_{days}_days_s"] = max(per_type.values())
            rows[days] = sum(len(reader.query(n, start, LAST).rows) for n in patterns.DETECTORS)
    return {
        "where": where,
        "figures": figures,
        "verdicts": {k: "met" if v < TARGETS[k] else "MISSED" for k, v in figures.items()},
        "rows_read": rows,
        "note": f"{PER_DAY} aggregates a day (10 per detector type); reads: the slowest of "
        "the six types, one query each, models validated",
    }


def render(result: dict) -> list[str]:
    lines = [f"pattern bucket ({result['where']}):"]
    for key, value in result["figures"].items():
        lines.append(
            f"  {key:<20} {value * 1000:8.1f} ms  < {TARGETS[key] * 1000:g} ms  "
            f"{result['verdicts'][key]}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_influx")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = measure(args.reps)
    print("\n".join(render(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all(v == "met" for v in result["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
