"""``agg-pipeline``: set-up and operations commands around the Dagster project.

    agg-pipeline db start|stop|url [--dagster]   the local embedded PostgreSQL
    agg-pipeline migrate [--adopt]                apply migrations (safe to repeat); --adopt sets
                                                  old tables of another shape aside (_legacy)
    agg-pipeline import-history [--from-influx]   old ETL / InfluxDB aggregates into the rollups
    agg-pipeline seed --days N [...]              simulated readings into raw.readings
    agg-pipeline seed-diagnostics --days N [...]  simulated diagnoses into raw.diagnostics
    agg-pipeline seed-events --days N [...]       simulated home events into raw.events
    agg-pipeline seed-activity --days N [...]     simulated executions, activity, credits
    agg-pipeline serve [--host H] [--port 8000] [--workers 1]
                                                  the HTTP API (analytics, ETL status / run;
                                                  `dev` starts it too, --api-port 8000)
    agg-pipeline run hourly|daily|full|backfill|cleanup [--dry-run] [--wait]
                                                  the old run_etl.py commands, as backfills
    agg-pipeline feed [--interval 10]             a live feed of simulated readings (Ctrl-C stops)
    agg-pipeline status [--json] [--days N]       what is stale, missing, failed or failing
    agg-pipeline influx ensure-buckets|compare|tasks   the InfluxDB sink and the old Flux tasks
    agg-pipeline dev [--port 3000] [--no-feed]    all of the above, then `dagster dev` + the feed

Every command honours DATABASE_URL (the warehouse) and, for `dev`, DAGSTER_PG_URL (the
Dagster instance storage); unset, both live on the local embedded server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from pydantic import ValidationError

from agg_pipeline.config.catalogue import CatalogueError, get_catalogue
from agg_pipeline.config.settings import SettingsError, get_settings, project_root
from agg_pipeline.demo import readings as simulator
from agg_pipeline.influx.client import InfluxError
from agg_pipeline.sources.history import HistoryError
from agg_pipeline.warehouse import localdb, migrate
from agg_pipeline.warehouse.engine import (
    WarehouseUnavailable,
    check_reachable,
    engine_for,
    masked,
    resolve_url,
)
from agg_pipeline.warehouse.statements import quote_ident

if TYPE_CHECKING:  # dagster is imported only by the commands that need it
    import dagster as dg
    from fastapi import FastAPI

    from agg_pipeline.influx.client import InfluxResource


def _warehouse_engine() -> sa.Engine:
    engine = engine_for(resolve_url(get_settings().database_url))
    check_reachable(engine)
    return engine


def cmd_db(args: argparse.Namespace) -> int:
    home = get_settings().home
    if args.action == "start":
        socket_dir = localdb.start(home)
        print(f"local PostgreSQL running, socket in {socket_dir}")
        print(localdb.url_for(socket_dir, localdb.WAREHOUSE_DB))
    elif args.action == "stop":
        print("stopped" if localdb.stop(home) else "not running")
    else:  # url
        database = localdb.DAGSTER_DB if args.dagster else localdb.WAREHOUSE_DB
        print(localdb.local_url(home, database))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    engine = _warehouse_engine()
    set_aside: list[str] = []
    applied = migrate.migrate(engine, adopt=getattr(args, "adopt", False), set_aside=set_aside)
    where = masked(engine.url.render_as_string(hide_password=False))
    for moved in set_aside:
        print(f"set aside {moved} (rows kept; `agg-pipeline import-history` imports them)")
    print(f"{len(applied)} migration(s) applied to {where}" + (": " if applied else ""))
    for name in applied:
        print(f"  {name}")
    return 0


def cmd_import_history(args: argparse.Namespace) -> int:
    from agg_pipeline.sources import history

    engine = _warehouse_engine()
    catalogue = get_catalogue()
    reports = []
    if not args.no_legacy:
        reports.append(history.import_legacy(engine, catalogue, dry_run=args.dry_run))
    if args.from_influx:
        reports.append(
            history.import_influx(
                engine,
                catalogue,
                _influx(),
                args.from_influx,
                device_tag=args.device_tag,
                measurement=args.measurement,
                dry_run=args.dry_run,
            )
        )
    if not reports:
        print("nothing to import: --no-legacy and no --from-influx", file=sys.stderr)
        return 2
    for report in reports:
        print(report.render(dry_run=args.dry_run))
    return 0


def _progress(total: int, until: datetime) -> None:
    print(f"\r  {total:>12,} rows, up to {until:%Y-%m-%d %H:%M} UTC", end="", flush=True)


def _table_empty(table: str) -> bool:
    with _warehouse_engine().connect() as conn:
        # `table` is one of ours, not user input.
        return not conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {table})")).scalar()


def cmd_seed(args: argparse.Namespace) -> int:
    engine = _warehouse_engine()
    catalogue = get_catalogue()
    if not catalogue.raw_in_postgres:
        print(
            f"error: catalogue {catalogue.name!r} reads raw readings from "
            f"{catalogue.source.describe()}; `seed` writes simulated readings to PostgreSQL "
            "only (use a postgres catalogue to try agg_pipeline out)",
            file=sys.stderr,
        )
        return 2
    if args.if_empty:
        table = catalogue.source.table
        with engine.connect() as conn:
            # `table` is a validated identifier from the catalogue.
            has_rows = conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {table})")).scalar()
        if has_rows:
            print(f"{table} already has readings: not seeding (drop --if-empty to add more)")
            return 0
    start = (
        datetime.combine(args.start, datetime.min.time(), tzinfo=UTC)
        if args.start
        else simulator.default_start(args.days)
    )
    fields = tuple(args.fields.split(",")) if args.fields else None
    spec = simulator.SimulationSpec(
        start=start, days=args.days, devices=args.devices, hz=args.hz, seed=args.seed, fields=fields
    )
    print(
        f"seeding {catalogue.name}: {args.devices} devices x "
        f"{len(fields or catalogue.fields)} fields at {args.hz:g} Hz, "
        f"{start:%Y-%m-%d %H:%M} UTC + {args.days:g} day(s)"
    )
    total = simulator.write(engine, catalogue, spec, progress=_progress)
    print(f"\nwrote {total:,} readings")
    if not args.no_demo_crops:
        simulator.write_demo_crops(engine)
        print(f"demo crop batch {simulator.DEMO_BATCH[0]} present (lettuce ranges)")
    return 0


def cmd_seed_diagnostics(args: argparse.Namespace) -> int:
    engine = _warehouse_engine()
    catalogue = get_catalogue()
    start = (
        datetime.combine(args.start, datetime.min.time(), tzinfo=UTC)
        if args.start
        else simulator.default_start(args.days)
    )
    n = simulator.write_diagnostics(
        engine, catalogue, start, args.days, args.devices, args.per_day, args.seed
    )
    print(f"wrote {n:,} diagnoses for {args.devices} devices from {start:%Y-%m-%d %H:%M} UTC")
    return 0


def cmd_seed_events(args: argparse.Namespace) -> int:
    from agg_pipeline.demo import home_events as simulator_events

    engine = _warehouse_engine()
    zone = get_settings().zone
    first = args.start or (datetime.now(zone).date() - timedelta(days=int(args.days)))
    events = simulator_events.simulate(first, int(args.days), zone, seed=args.seed)
    n = simulator_events.write(engine, events, seed=args.seed)
    print(f"wrote {n:,} home-automation events for {int(args.days)} day(s) from {first}")
    return 0


def cmd_seed_activity(args: argparse.Namespace) -> int:
    from agg_pipeline.demo import activity

    engine = _warehouse_engine()
    if args.if_empty and not _table_empty("raw.executions"):
        print("raw.executions already has events: not seeding (drop --if-empty to add more)")
        return 0
    zone = get_settings().zone
    first = args.start or (datetime.now(zone).date() - timedelta(days=int(math.ceil(args.days))))
    start = datetime.combine(first, datetime.min.time(), tzinfo=zone)
    events = activity.simulate(
        start,
        args.days,
        workspaces=args.workspaces,
        users_per_workspace=args.users,
        executions_per_hour=args.per_hour,
        seed=args.seed,
        first_id=activity.next_execution_id(engine),
    )
    written = activity.write(engine, events)
    print(
        f"wrote {', '.join(f'{n:,} rows to {t}' for t, n in written.items())} "
        f"({args.workspaces} workspaces x {args.users} users, {args.days:g} day(s) from {first})"
    )
    return 0


def _dagster_home(home: Path) -> Path:
    """A DAGSTER_HOME whose dagster.yaml is the project's (linked, so edits apply)."""
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    root = project_root()
    target = dagster_home / "dagster.yaml"
    if root and (root / "dagster.yaml").is_file():
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(root / "dagster.yaml")
    return dagster_home


def cmd_feed(args: argparse.Namespace) -> int:
    from agg_pipeline.demo import feed

    catalogue = get_catalogue()
    if not catalogue.raw_in_postgres:
        print(f"error: the feed writes to PostgreSQL; catalogue {catalogue.name!r} reads "
              f"{catalogue.source.describe()}", file=sys.stderr)  # fmt: skip
        return 2
    spec = feed.FeedSpec(devices=args.devices, hz=args.hz, interval=args.interval)
    print(f"live feed: {args.devices} devices every {args.interval:g} s (Ctrl-C stops)")
    with contextlib.suppress(KeyboardInterrupt):
        feed.run(_warehouse_engine(), catalogue, spec, log=lambda m: print(m, flush=True))
    return 0


@dataclass(frozen=True)
class Child:
    """One process `agg-pipeline dev` runs until it is stopped, in its own process group
    (so stopping it stops everything it started)."""

    name: str
    argv: list[str]


def _dev_children(args: argparse.Namespace, root: Path) -> list[Child]:
    """What `dev` runs side by side, one entry per process."""
    bin_dir = str(Path(sys.executable).parent)
    dagster = shutil.which("dagster", path=bin_dir) or "dagster"
    workspace = str(root / "workspace.yaml")
    children = [
        Child("dagster", [dagster, "dev", "-w", workspace, "-h", args.host, "-p", str(args.port)])
    ]
    me = shutil.which("agg-pipeline", path=bin_dir) or "agg-pipeline"
    if args.api_port:
        api = ["serve", "--host", args.host, "--port", str(args.api_port)]
        children.append(Child("api", [me, *api]))
    if not args.no_feed and get_settings().dev_feed:
        feed = ["--interval", str(args.feed_interval), "--devices", str(args.seed_devices)]
        children.append(Child("feed", [me, "feed", *feed, "--hz", str(args.seed_hz)]))
    return children


def _demo_start(zone: ZoneInfo) -> date | None:
    """The local day of the first raw reading: where `dev` starts the partitions."""
    src = get_catalogue().source
    with _warehouse_engine().connect() as conn:
        # Identifiers come validated from the catalogue.
        first = conn.execute(
            sa.text(f"SELECT min({quote_ident(src.time_column)}) FROM {quote_ident(src.table)}")
        ).scalar()
    return first.astimezone(zone).date() if first else None


_BACKFILLS = (
    "{ partitionBackfillsOrError(limit: 1) { ... on PartitionBackfills { results { id } } } }"
)
_ASSETS = "{ assetNodes { assetKey { path } isPartitioned isMaterializable } }"
_LAUNCH = """mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def _submit_demo_backfill(url: str, stop: threading.Event) -> None:
    """Once the webserver answers: one backfill of every partitioned asset over all its
    partitions (the demo window, as the partitions start at the demo's first day), run by
    the daemon. Not again on a later `dev` (the instance already has a backfill)."""
    while not stop.is_set():
        try:
            nodes = _graphql(url, _ASSETS)["assetNodes"]
            break
        except Exception:  # not up yet
            stop.wait(2)
    else:
        return
    if _graphql(url, _BACKFILLS)["partitionBackfillsOrError"].get("results"):
        return
    keys = [
        {"path": n["assetKey"]["path"]}
        for n in nodes
        if n["isPartitioned"] and n["isMaterializable"]
    ]
    params = {"assetSelection": keys, "allPartitions": True, "title": "make dev: the demo window"}
    result = _graphql(url, _LAUNCH, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] == "LaunchBackfillSuccess":
        print(f"submitted backfill {result['backfillId']} of the demo window ({len(keys)} assets): "
              "Overview -> Backfills", flush=True)  # fmt: skip
    else:
        print(f"could not submit the demo backfill: {result.get('message', result)}", flush=True)


def _stop_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _run_children(children: list[Child], cwd: Path, grace: float = 3.0) -> int:
    """Run every child until Ctrl-C (or until the first, Dagster, ends; another that ends
    is reported), then stop them all: SIGTERM to each process group, SIGKILL to what is
    left after ``grace`` seconds. (`dagster dev` alone, stopped by Ctrl-C, took ~35 s to
    let its daemon and code server go.)"""
    procs = {c.name: subprocess.Popen(c.argv, cwd=cwd, start_new_session=True) for c in children}
    stopping = threading.Event()
    asked = [0.0]

    def on_signal(_signum: int, _frame: object) -> None:
        asked[0] = asked[0] or time.monotonic()
        stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    main, reported = procs[children[0].name], set()
    try:
        while not stopping.is_set() and main.poll() is None:
            for name, proc in procs.items():
                if proc.poll() is not None and name not in reported:
                    reported.add(name)
                    print(f"{name} ended (exit {proc.returncode}); the rest keeps running")
            stopping.wait(0.5)
    finally:
        started = time.monotonic()
        for proc in procs.values():
            _stop_group(proc, signal.SIGTERM)
        for proc in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, grace - (time.monotonic() - started)))
            _stop_group(proc, signal.SIGKILL)  # whatever the group still holds
            proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
        since = asked[0] or started
        print(f"stopped {', '.join(procs)} {time.monotonic() - since:.1f} s after the signal")
    return 0 if stopping.is_set() or main.returncode == 0 else 1


def cmd_dev(args: argparse.Namespace) -> int:
    settings = get_settings()
    root = project_root()
    if root is None:
        print("`agg-pipeline dev` runs from a source checkout (pip install -e .)", file=sys.stderr)
        return 2
    warehouse_url = settings.database_url or localdb.local_url(settings.home, localdb.WAREHOUSE_DB)
    dagster_url = os.environ.get("DAGSTER_PG_URL") or localdb.local_url(
        settings.home, localdb.DAGSTER_DB
    )
    os.environ["DATABASE_URL"] = warehouse_url
    os.environ["DAGSTER_PG_URL"] = dagster_url
    os.environ.setdefault("DAGSTER_HOME", str(_dagster_home(settings.home)))

    cmd_migrate(args)
    if not args.no_seed:
        _seed_demo(args)
    # The partitions start at the demo's first day (not 2025-01-01): the graph fills.
    first = _demo_start(settings.zone)
    if first and "AGG_PIPELINE_START_DATE" not in os.environ:
        os.environ["AGG_PIPELINE_START_DATE"] = first.isoformat()
        print(f"partitions start {first} (the demo's first day; AGG_PIPELINE_START_DATE)")
    children = _dev_children(args, root)
    home = os.environ["DAGSTER_HOME"]
    if args.api_port:
        print(f"starting the HTTP API at http://{args.host}:{args.api_port}/docs")
    print(f"starting Dagster at http://{args.host}:{args.port} (DAGSTER_HOME={home}); "
          f"running: {', '.join(c.name for c in children)}; Ctrl-C stops all")  # fmt: skip
    sys.stdout.flush()
    stop = threading.Event()
    if not args.no_seed:
        url = f"http://{args.host}:{args.port}/graphql"
        threading.Thread(target=_submit_demo_backfill, args=(url, stop), daemon=True).start()
    try:
        return _run_children(children, root)
    finally:
        stop.set()


def _seed_demo(args: argparse.Namespace) -> None:
    """Readings, diagnostics, home events and event metrics, each only into an empty table."""
    seed_args = argparse.Namespace(
        days=args.seed_days,
        start=None,
        devices=args.seed_devices,
        hz=args.seed_hz,
        seed=42,
        fields=None,
        if_empty=True,
        no_demo_crops=False,
    )
    if cmd_seed(seed_args) != 0:
        return
    first = _demo_start(get_settings().zone)
    if _table_empty("raw.diagnostics"):
        cmd_seed_diagnostics(
            argparse.Namespace(
                days=args.seed_days, start=None, devices=args.seed_devices, per_day=24.0, seed=42
            )
        )
    if _table_empty("raw.events"):
        cmd_seed_events(
            argparse.Namespace(days=int(math.ceil(args.seed_days)), start=first, seed=42)
        )
    cmd_seed_activity(
        argparse.Namespace(
            days=args.seed_days,
            start=first,
            workspaces=5,
            users=4,
            per_hour=20.0,
            seed=42,
            if_empty=True,
        )
    )


def _dagster_instance() -> dg.DagsterInstance | None:
    """The Dagster instance: DAGSTER_HOME's, else the one `make dev` uses; None if neither."""
    import dagster as dg

    settings = get_settings()
    if not os.environ.get("DAGSTER_HOME"):
        local_home = settings.home / "dagster_home"
        if not (local_home / "dagster.yaml").exists():
            return None
        os.environ["DAGSTER_HOME"] = str(local_home)
        if not os.environ.get("DAGSTER_PG_URL"):
            os.environ["DAGSTER_PG_URL"] = localdb.local_url(settings.home, localdb.DAGSTER_DB)
    try:
        return dg.DagsterInstance.get()
    except Exception as exc:  # a broken instance is a status finding, not a crash
        print(f"agg-pipeline: cannot open the Dagster instance: {exc}", file=sys.stderr)
        return None


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from agg_pipeline import status as status_mod
    from agg_pipeline.definitions import defs

    url = resolve_url(get_settings().database_url)
    engine = engine_for(url)
    instance = _dagster_instance()
    result = status_mod.collect(defs, instance, engine, masked(url), days=args.days)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        print(status_mod.render(result))
    return 0 if result.ok else 1


def api_app() -> FastAPI:
    """The HTTP API over DATABASE_URL and the Dagster instance (uvicorn's factory: each
    worker process builds its own engine and instance)."""
    from agg_pipeline.definitions import defs
    from agg_pipeline.launch import InstanceBackend
    from agg_pipeline.serving.api import create_app

    url = resolve_url(get_settings().database_url)
    engine = engine_for(url)  # pooled; not checked here: a warehouse down answers 503
    return create_app(engine, InstanceBackend(defs, _dagster_instance(), engine, masked(url)))


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(
        "agg_pipeline.cli:api_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        access_log=False,  # the app logs every request with its duration (agg_pipeline.api)
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from agg_pipeline import launch

    try:
        return _run(args)
    except launch.LaunchError as exc:
        print(f"agg-pipeline: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from agg_pipeline import launch
    from agg_pipeline.definitions import defs
    from agg_pipeline.serving.api.etl import RunRequest

    request = RunRequest(
        command=args.etl_command,
        hours=getattr(args, "hours", None),
        days=getattr(args, "days", None),
        retention_days=getattr(args, "retention_days", None),
        dry_run=args.dry_run,
    )
    steps = launch.plan(defs, request)
    launch.estimate(_warehouse_engine(), steps)
    for step in steps:
        if step.kind == "backfill":
            print(
                f"{step.job}: {', '.join(k.to_user_string() for k in step.assets)} over "
                f"{len(step.partitions)} partition(s) {step.partitions[0]} .. "
                f"{step.partitions[-1]}, ~{step.estimated_rows:,} rows per asset table"
            )
        else:
            print(f"{step.job}: one run, config {step.run_config['ops']}")
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    instance = _dagster_instance()
    if args.wait:
        if instance is None:
            import dagster as dg

            print("no Dagster instance (DAGSTER_HOME): runs are not recorded", file=sys.stderr)
            instance = dg.DagsterInstance.ephemeral()
        ok = launch.execute(defs, instance, steps, request.command)
        for step in steps:
            print(f"{step.job}: run {step.id}")
        print("succeeded" if ok else "FAILED", file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    if instance is None:
        print(
            "agg-pipeline: no Dagster instance (set DAGSTER_HOME), or use --wait", file=sys.stderr
        )
        return 2
    launch.submit(defs, instance, steps, request.command)
    for step in steps:
        print(f"{step.job}: submitted {step.kind} {step.id}")
    return 0


def _influx() -> InfluxResource:
    from agg_pipeline.influx.client import InfluxError, InfluxResource

    env = {k: os.environ.get(f"INFLUXDB_{k.upper()}") for k in ("url", "token", "org")}
    missing = [f"INFLUXDB_{k.upper()}" for k, v in env.items() if not v]
    if missing:
        raise InfluxError(f"set {', '.join(missing)} to reach InfluxDB")
    return InfluxResource(**env)


def cmd_influx(args: argparse.Namespace) -> int:
    from agg_pipeline.influx import sink as influx_sink

    influx = _influx()
    if args.action == "ensure-buckets":
        sink = get_catalogue().influx_sink
        if sink is None:
            print("the catalogue has no influx_sink: no buckets to create", file=sys.stderr)
            return 2
        outcomes = influx_sink.ensure_buckets(influx, sink, apply=args.apply, cached=False)
        for bucket, outcome in outcomes.items():
            print(f"{bucket}: {outcome}")
        return 1 if any(o.startswith("retention differs") for o in outcomes.values()) else 0
    if args.action == "compare":
        return _influx_compare(args, influx)
    # tasks
    tasks = influx.list_tasks(args.prefix)
    if args.task_action == "list" or not tasks:
        for t in tasks:
            print(f"{t['id']}  {t['status']:<8}  every {t['every'] or '-':<5}  {t['name']}")
        if not tasks:
            print(f"no tasks named {args.prefix}*")
        return 0
    if not args.yes:
        names = ", ".join(t["name"] for t in tasks)
        print(f"would {args.task_action} {len(tasks)} task(s): {names}\nre-run with --yes")
        return 1
    for t in tasks:
        if args.task_action == "disable":
            influx.set_task_status(t["id"], "inactive")
        else:
            influx.delete_task(t["id"])
        print(f"{args.task_action}d {t['name']} ({t['id']})")
    return 0


def _influx_compare(args: argparse.Namespace, influx: InfluxResource) -> int:
    from agg_pipeline.core.windows import Window
    from agg_pipeline.influx import sink as influx_sink

    end = args.end or datetime.now(UTC).replace(second=0, microsecond=0)
    if end <= args.start:
        print(f"--end ({end.isoformat()}) must be after --start ({args.start.isoformat()})")
        return 2
    window = Window(args.start, end)
    engine = engine_for(resolve_url(get_settings().database_url))
    ok = True
    for level in args.level or ["1m", "5m"]:
        c = influx_sink.compare_windows(engine, influx, get_catalogue(), level, window)
        print(
            f"{level}: {c.same} points equal PostgreSQL, {c.differing} differ, "
            f"{c.only_influx} in InfluxDB only (no window at that time: shifted or extra), "
            f"{c.only_postgres} window values not in InfluxDB (not written yet, or count: "
            "the old tasks wrote none)"
        )
        for example in c.examples:
            print(f"  {example}")
        ok = ok and c.ok
    return 0 if ok else 1


def _utc_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agg-pipeline", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="the local embedded PostgreSQL server")
    db.add_argument("action", choices=["start", "stop", "url"])
    db.add_argument("--dagster", action="store_true", help="url: the Dagster storage database")
    db.set_defaults(func=cmd_db)

    mig = sub.add_parser(
        "migrate",
        help="apply the migrations to the warehouse (safe to repeat)",
        description="Apply the shipped migrations (agg_pipeline/warehouse/migrations/) to the "
        "warehouse in one transaction (safe to repeat). Tables "
        "that already exist with another shape (e.g. the old ETL's bi.hourly_sensor_agg) stop "
        "it before any change, naming each table and column.",
    )
    mig.add_argument(
        "--adopt",
        action="store_true",
        help="rename existing tables of another shape aside to <name>_legacy (same schema, "
        "rows kept, importable with `import-history`), then migrate",
    )
    mig.set_defaults(func=cmd_migrate)

    ih = sub.add_parser(
        "import-history",
        help="copy the old system's hourly/daily aggregates into the rollups (origin=imported)",
        description="Import history that raw readings no longer hold into bi.hourly_sensor_agg "
        "and bi.daily_sensor_agg, marked origin='imported' (medians, m2 and first/last "
        "reading NULL where the old system did not keep them). Sources: the old ETL's "
        "bi.hourly_sensor_agg_legacy / bi.daily_sensor_agg_legacy (left by `migrate --adopt`) "
        "and, with --from-influx, the old Flux tasks' <bucket>_hourly / <bucket>_daily "
        "buckets (INFLUXDB_URL, INFLUXDB_TOKEN, INFLUXDB_ORG). Rows computed from raw always "
        "win: an import never replaces one, and a later computation replaces an imported "
        "row. Safe to repeat.",
    )
    ih.add_argument(
        "--from-influx",
        metavar="BUCKET",
        help="also read BUCKET_hourly and BUCKET_daily (e.g. hydroponics) from InfluxDB",
    )
    ih.add_argument(
        "--device-tag",
        default="sensor_tag",
        help="--from-influx: the tag naming the device (default sensor_tag, as the old ETL)",
    )
    ih.add_argument(
        "--measurement", help="--from-influx: only points of this measurement (default: any)"
    )
    ih.add_argument(
        "--no-legacy", action="store_true", help="skip the PostgreSQL bi.*_legacy tables"
    )
    ih.add_argument(
        "--dry-run", action="store_true", help="count what would be imported, write nothing"
    )
    ih.set_defaults(func=cmd_import_history)

    seed = sub.add_parser("seed", help="write simulated readings into the raw table")
    seed.add_argument("--days", type=float, default=3.0, help="how many days (default 3)")
    seed.add_argument(
        "--start", type=date.fromisoformat, help="first day, UTC (default: DAYS before now)"
    )
    seed.add_argument("--devices", type=int, default=4, help="how many devices (default 4)")
    seed.add_argument(
        "--hz", type=float, default=0.1, help="readings per second per sensor (default 0.1)"
    )
    seed.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    seed.add_argument("--fields", help="comma-separated subset of the catalogue's fields")
    seed.add_argument("--if-empty", action="store_true", help="only if the table is empty")
    seed.add_argument(
        "--no-demo-crops",
        action="store_true",
        help="do not add the demo lettuce stages and open batch DEMO-LETTUCE-1 (added by "
        "default, for conditions on simulated data; migrate adds no demo rows)",
    )
    seed.set_defaults(func=cmd_seed)

    st = sub.add_parser(
        "status", help="freshness, missing/failed partitions, checks, row counts (exit 1: problems)"
    )
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--days", type=int, default=7, help="look back this many days (default 7)")
    st.set_defaults(func=cmd_status)

    sd = sub.add_parser("seed-diagnostics", help="write simulated diagnoses into raw.diagnostics")
    sd.add_argument("--days", type=float, default=3.0)
    sd.add_argument("--start", type=date.fromisoformat, help="first day, UTC")
    sd.add_argument("--devices", type=int, default=4)
    sd.add_argument("--per-day", type=float, default=24.0, help="diagnoses per device per day")
    sd.add_argument("--seed", type=int, default=42)
    sd.set_defaults(func=cmd_seed_diagnostics)

    se = sub.add_parser("seed-events", help="simulated home-automation events (raw.events)")
    se.add_argument("--days", type=int, default=21, help="local days (default 21)")
    se.add_argument("--start", type=date.fromisoformat, help="first day (default: DAYS ago)")
    se.add_argument("--seed", type=int, default=42)
    se.set_defaults(func=cmd_seed_events)

    sa_ = sub.add_parser(
        "seed-activity",
        help="simulated executions, user activity and credit usage (raw.executions, ...)",
    )
    sa_.add_argument("--days", type=float, default=3.0, help="how many days (default 3)")
    sa_.add_argument("--start", type=date.fromisoformat, help="first local day (default: DAYS ago)")
    sa_.add_argument("--workspaces", type=int, default=5, help="how many workspaces (default 5)")
    sa_.add_argument("--users", type=int, default=4, help="users per workspace (default 4)")
    sa_.add_argument(
        "--per-hour", type=float, default=20.0, help="executions per hour at peak (default 20)"
    )
    sa_.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    sa_.add_argument("--if-empty", action="store_true", help="only if raw.executions is empty")
    sa_.set_defaults(func=cmd_seed_activity)

    ix = sub.add_parser(
        "influx", help="InfluxDB 2.x: create the sink's buckets, retire the old Flux tasks"
    )
    ix_sub = ix.add_subparsers(dest="action", required=True)
    eb = ix_sub.add_parser(
        "ensure-buckets",
        help="create the catalogue's influx_sink buckets with retention; report a bucket "
        "whose retention differs (exit 1)",
    )
    eb.add_argument("--apply", action="store_true", help="correct a differing retention")
    eb.set_defaults(func=cmd_influx)
    cmp_ = ix_sub.add_parser(
        "compare",
        help="the <measurement>_1m / _5m points in InfluxDB against PostgreSQL's windows "
        "(exit 1 on a differing or shifted point)",
    )
    cmp_.add_argument("--start", type=_utc_time, required=True, help="ISO time (UTC if naive)")
    cmp_.add_argument("--end", type=_utc_time, help="ISO time (default: now)")
    cmp_.add_argument("--level", choices=["1m", "5m"], action="append", help="default both")
    cmp_.set_defaults(func=cmd_influx)
    tasks = ix_sub.add_parser("tasks", help="the old downsampling tasks (aggregate_1m_mean ...)")
    tasks.add_argument("task_action", choices=["list", "disable", "delete"])
    tasks.add_argument(
        "--prefix", default="aggregate_", help="task name prefix (default aggregate_)"
    )
    tasks.add_argument("--yes", action="store_true", help="disable / delete without asking")
    tasks.set_defaults(func=cmd_influx)

    sv = sub.add_parser("serve", help="the HTTP API: /api/v1/analytics/..., /api/etl/...")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    sv.set_defaults(func=cmd_serve)

    run = sub.add_parser(
        "run",
        help="the old run_etl.py commands: submitted to the Dagster instance as backfills",
        description="Plan partitions of the hourly / daily jobs (or the retention job) and "
        "submit them to the Dagster instance (the daemon runs them); --wait runs them here "
        "instead (exit code = success), --dry-run only prints the plan.",
    )
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    flags.add_argument("--wait", action="store_true", help="run here; exit code = success")
    run_sub = run.add_subparsers(dest="etl_command", required=True)
    rh = run_sub.add_parser("hourly", parents=[flags], help="the last complete hours")
    rh.add_argument("--hours", type=int, default=None, help="how many (default 3)")
    rd = run_sub.add_parser("daily", parents=[flags], help="the last complete local days")
    rd.add_argument("--days", type=int, default=None, help="how many (default 2)")
    run_sub.add_parser("full", parents=[flags], help="hourly + daily + cleanup")
    rb = run_sub.add_parser("backfill", parents=[flags], help="hours and days of N days")
    rb.add_argument("--days", type=int, required=True)
    rc = run_sub.add_parser("cleanup", parents=[flags], help="the retention job")
    rc.add_argument("--retention-days", type=int, default=None)
    run.set_defaults(func=cmd_run)

    dev = sub.add_parser("dev", help="local database, schema, demo data, then `dagster dev`")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.add_argument(
        "--api-port", type=int, default=8000, help="`agg-pipeline serve` beside it (0: not)"
    )
    dev.add_argument("--no-seed", action="store_true", help="do not load demo data")
    dev.add_argument("--seed-days", type=float, default=3.0)
    dev.add_argument("--seed-devices", type=int, default=4)
    dev.add_argument("--seed-hz", type=float, default=0.1)
    dev.add_argument(
        "--no-feed",
        action="store_true",
        help="no live feed of simulated readings (also AGG_PIPELINE_DEV_FEED=false)",
    )
    dev.add_argument("--feed-interval", type=float, default=10.0, help="seconds (default 10)")
    dev.set_defaults(func=cmd_dev)

    fd = sub.add_parser("feed", help="write simulated readings every few seconds until stopped")
    fd.add_argument("--interval", type=float, default=10.0, help="seconds (default 10)")
    fd.add_argument("--devices", type=int, default=4)
    fd.add_argument("--hz", type=float, default=0.1)
    fd.set_defaults(func=cmd_feed)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        SettingsError,
        CatalogueError,
        WarehouseUnavailable,
        migrate.MigrationError,
        InfluxError,
        HistoryError,
        ValidationError,
    ) as exc:
        print(f"agg-pipeline: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
