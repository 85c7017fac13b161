"""`make dev`'s parts that are not Dagster: the live feed, and stopping everything.

The feed writes to a real warehouse; the stop is measured on real process groups (a child
that ignores SIGTERM, as a slow code server, and one that forks a grandchild).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from agg_pipeline import cli
from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.demo import feed
from agg_pipeline_tests import reference


def test_a_feed_tick_writes_readings_a_bad_and_a_late_one(engine: sa.Engine):
    catalogue = load_catalogue("hydroponics")
    spec = feed.FeedSpec(devices=2, hz=0.1, bad_every=1, late_every=1)  # both, every tick
    now = datetime.now(UTC)
    since = now - timedelta(seconds=60)
    until = feed.whole_periods(since, now, spec.hz)  # 6 periods of 10 s
    assert until == since + timedelta(seconds=60, microseconds=-1)
    written = feed.tick(engine, catalogue, spec, since, until, random.Random(1))
    assert written["bad"] == 1 and written["late"] == 1

    raw = reference.load_raw(engine, until - timedelta(hours=3), until + timedelta(minutes=1))
    recent = raw[raw["time"] >= since]
    # 2 devices x 7 fields x 6 ticks of 10 s (the simulator's own rare bad rows aside)
    assert abs(len(recent) - 2 * len(catalogue.fields) * 6) <= 3, len(recent)
    rejected = reference.rejected_by_reason(recent, catalogue, until + timedelta(minutes=1))
    assert rejected["nan"] + rejected["out_of_bounds"] >= 1
    late = raw[raw["time"] < until - timedelta(hours=1)]
    assert len(late) == 1  # two hours back: an hour that closed long ago
    quarter = late["time"].iloc[0].floor("15min").to_pydatetime()  # the log's 15-min bins
    with engine.connect() as conn:
        logged = conn.execute(
            sa.text("SELECT count(*) FROM raw.readings_change_log WHERE bucket_start = :q"),
            {"q": quarter},
        ).scalar()
    assert logged == 1  # in the change log: late_data_sensor and the healer act on it
    assert feed.last_reading(engine, catalogue) >= until - timedelta(seconds=2)


STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a slow shutdown, as dagster dev's
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a grandchild
print("ready", flush=True)
time.sleep(600)
"""


def running_in_group(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run (zombies waiting for a reaper do not)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def test_dev_stops_every_child_within_seconds(tmp_path: Path):
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    children = [
        cli.Child("dagster", [sys.executable, str(script)]),
        cli.Child("feed", [sys.executable, "-c", "import time; time.sleep(600)"]),
    ]
    groups: list[int] = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        groups.append(proc.pid)
        return proc

    result: dict[str, object] = {}

    def run() -> None:
        subprocess.Popen = recording_popen  # type: ignore[misc]
        try:
            result["rc"] = cli._run_children(children, tmp_path, grace=2.0)
        finally:
            subprocess.Popen = real_popen  # type: ignore[misc]

    # signal.signal only works in the main thread: run the loop here, stop it from a timer.
    def interrupt() -> None:
        deadline = time.monotonic() + 20
        while len(groups) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the stubborn child has ignored SIGTERM and forked by now
        result["stop_at"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    run()
    took = time.monotonic() - result["stop_at"]
    assert result["rc"] == 0
    assert took < 5, f"stopping took {took:.1f} s"
    time.sleep(0.2)
    assert len(groups) == 2
    for pgid in groups:
        assert not running_in_group(pgid), f"process group {pgid} still runs"


def test_the_feed_and_api_switches(monkeypatch, tmp_path: Path):
    args = argparse.Namespace(
        host="127.0.0.1",
        port=1,
        api_port=8000,
        no_feed=False,
        feed_interval=10.0,
        seed_devices=4,
        seed_hz=0.1,
    )
    children = cli._dev_children(args, tmp_path)
    assert [c.name for c in children] == ["dagster", "api", "feed"]
    assert children[1].argv[-4:] == ["--host", "127.0.0.1", "--port", "8000"]
    args.api_port = 0  # --api-port 0: no API
    assert [c.name for c in cli._dev_children(args, tmp_path)] == ["dagster", "feed"]
    monkeypatch.setenv("AGG_PIPELINE_DEV_FEED", "false")
    cli.get_settings.cache_clear()
    assert [c.name for c in cli._dev_children(args, tmp_path)] == ["dagster"]
    monkeypatch.delenv("AGG_PIPELINE_DEV_FEED")
    cli.get_settings.cache_clear()
    args.no_feed = True
    assert [c.name for c in cli._dev_children(args, tmp_path)] == ["dagster"]
