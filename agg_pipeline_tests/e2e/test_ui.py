"""The UI path, in a real browser: what a person clicks in the Dagster web UI.

``dagster dev`` (webserver, daemon and code server, as ``make dev`` starts them) runs on a
fresh warehouse holding one day of readings with bad ones in it; headless Chromium
(Debian's package, driven by Playwright for Python; Playwright never downloads a browser)
opens the ``rollups`` group, selects the hourly assets, launches a backfill of the day's
24 hours from the Materialize dialog, waits for the backfill page to say it succeeded, and
the rows are compared with the pandas reference; then the daily rollup the same way; then
a partition page must show the materialization's metadata.

On failure a screenshot of the page is saved and its path is in the failure message. With
AGG_PIPELINE_SCREENSHOTS=<dir> (``make screenshots``) the README's pictures are written
there: the asset graph, the backfill dialog and a partition page.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline_tests import data, reference
from agg_pipeline_tests.conftest import create_database, drop_database
from agg_pipeline_tests.e2e.test_e2e_daemon import free_port, graphql, wait_for
from agg_pipeline_tests.warehouse.test_rollups import assert_matches, table

CHROMIUM = shutil.which("chromium")
try:
    from playwright.sync_api import Page, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the test extras not installed
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="the browser tests need Debian's chromium package (apt-get install -y "
        "chromium; .ci/run installs it when run as root)",
    ),
    pytest.mark.skipif(
        sync_playwright is None, reason="playwright is not installed (pip install -e '.[test]')"
    ),
]

# What works on a closed network: without the background-networking flags Chromium's own
# connections (component updates, sync) are refused and slow every page down.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DAY = "2026-11-02"  # data.DAY0
NEXT_DAY = "2026-11-03"
BAD_HOUR = f"{DAY}-05:00"  # data.bad_rows go into this hour
HOURLY = ("readings_1m", "readings_5m", "rollup_hourly")
BACKFILL_TIMEOUT = 240.0
# Off: nothing but the clicks in this module may write the rollups (and the 2 cores stay
# free). The healer's lookback never reaches DAY anyway; it ticks rarely.
QUIET = {
    **{
        f"AGG_PIPELINE_SCHEDULE_{name}": "false"
        for name in (
            "READINGS_1M",
            "READINGS_5M",
            "ROLLUP_HOURLY",
            "ROLLUP_DAILY",
            "CONDITIONS_DAILY",
            "ROLLUP_WEEKLY",
            "ROLLUP_MONTHLY",
            "RETENTION",
            "PATTERNS",
            "DASHBOARD_REFRESH",
            "EVENTS_HOURLY",
            "EVENTS_DAILY",
            "EVENTS_WEEKLY",
            "EVENTS_MONTHLY",
            "ANALYTICS_VIEWS",
        )
    },
    "AGG_PIPELINE_LATE_DATA_SENSOR": "false",
    "AGG_PIPELINE_HEALING_INTERVAL_SECONDS": "3600",
}


@dataclass
class Ui:
    engine: sa.Engine
    port: int
    shots: Path  # failure screenshots
    pictures: Path | None  # README screenshots (AGG_PIPELINE_SCREENSHOTS)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def ui(pg_server_url: str, project_root: Path, tmp_path_factory) -> Iterator[Ui]:
    tmp = tmp_path_factory.mktemp("ui")
    tag = uuid.uuid4().hex[:8]
    warehouse = create_database(pg_server_url, f"aggui_wh_{tag}")
    storage = create_database(pg_server_url, f"aggui_dg_{tag}")
    engine = sa.create_engine(warehouse)
    from agg_pipeline.demo import readings as simulator
    from agg_pipeline.warehouse import migrate

    migrate.migrate(engine)
    simulator.write_demo_crops(engine)
    data.seed(engine, start=data.DAY0, days=1, devices=2, hz=0.01)
    data.insert(engine, data.bad_rows(data.DAY0 + timedelta(hours=5)))

    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(project_root / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": warehouse,
        "DAGSTER_PG_URL": storage,
        "DAGSTER_HOME": str(home),
        # One day of partitions to show, as `make dev` starts them at its data's first day.
        "AGG_PIPELINE_START_DATE": DAY,
        **QUIET,
    }
    log = open(tmp / "dagster-dev.log", "w")  # noqa: SIM115 - closed below
    dev = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "dev",
            "-w",
            str(project_root / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=project_root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pictures = os.environ.get("AGG_PIPELINE_SCREENSHOTS")
    try:
        wait_for(
            lambda: graphql(port, "{ assetNodes { assetKey { path } } }")["assetNodes"],
            timeout=180,
            what=f"dagster dev to serve the asset graph (log: {tmp / 'dagster-dev.log'})",
        )
        # The first visit's community dialog opens a second after the app's first query
        # returns, whenever that is: on a loaded machine it came up while the filter was
        # being typed, took the keystrokes, and the selection was never applied (a CI run
        # failed so). Marked seen on the server (what its Skip button does), it never opens;
        # README pictures are taken without it. new_page still dismisses it, should it come.
        graphql(port, "mutation { setNuxSeen }")
        assert graphql(port, "{ shouldShowNux }")["shouldShowNux"] is False
        yield Ui(
            engine, port, tmp_path_factory.mktemp("ui-shots"), Path(pictures) if pictures else None
        )
    finally:
        # The whole process group: dagster dev, its webserver, daemon and code server.
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait(timeout=30)
        with suppress(ProcessLookupError):
            os.killpg(dev.pid, signal.SIGKILL)  # any child left behind
        log.close()
        engine.dispose()
        drop_database(pg_server_url, f"aggui_wh_{tag}")
        drop_database(pg_server_url, f"aggui_dg_{tag}")


@pytest.fixture(scope="module")
def browser(ui: Ui) -> Iterator[object]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: object, ui: Ui, request: pytest.FixtureRequest) -> Iterator[Page]:
    pg = new_page(browser)
    yield pg
    pg.context.close()


@contextmanager
def shot_on_failure(page: Page, ui: Ui, name: str) -> Iterator[None]:
    """On any failure inside, save the page as a PNG and name it in the error."""
    try:
        yield
    except BaseException as exc:
        path = ui.shots / f"{name}-{int(time.time())}.png"
        try:
            page.screenshot(path=str(path), full_page=True)
            where = f"screenshot: {path}"
        except Exception as shot_error:  # the page itself may be gone
            where = f"no screenshot ({shot_error})"
        raise AssertionError(f"{name} failed at {page.url}; {where}\n{exc}") from exc


def picture(page: Page, ui: Ui, name: str, **kwargs: object) -> None:
    """A README picture (with AGG_PIPELINE_SCREENSHOTS): no dialog over it, nothing loading."""
    if ui.pictures is not None:
        welcome = page.get_by_text("Join the Dagster community")
        if welcome.is_visible():
            page.get_by_role("button", name="Skip", exact=True).click()
            welcome.wait_for(state="hidden")
        loading = page.get_by_text(re.compile(r"^Loading"))
        wait_for(lambda: loading.count() == 0, timeout=30, what="the page to load", interval=0.5)
        ui.pictures.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ui.pictures / f"{name}.png"), **kwargs)


def new_page(browser: object) -> Page:
    """A page in a fresh browser context that skips the first visit's community dialog
    (newsletter sign-up) whenever it comes up over the page."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(30_000)
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"),
        lambda: page.get_by_role("button", name="Skip", exact=True).click(),
    )
    return page


def apply_selection(page: Page, selection: str, attempts: int = 3) -> None:
    """Type ``selection`` into the lineage's filter (a CodeMirror 5 editor behind an offscreen
    textarea) and press Enter, as a person does, until the URL carries it. Keystrokes can be
    lost (focus taken by a dialog, the editor not yet live): each attempt clears the editor,
    types again and checks the text before Enter."""
    editor = page.get_by_label("Search and filter assets")
    seen: list[str] = []
    welcome = page.get_by_text("Join the Dagster community")
    for attempt in range(1, attempts + 1):
        # A forced click skips Playwright's pre-action checks, and with them new_page's
        # handler for the community dialog: dismiss it here should it be up.
        if welcome.is_visible():
            # new_page's handler may dismiss it first (this click is not forced).
            with suppress(PlaywrightTimeout):
                page.get_by_role("button", name="Skip", exact=True).click(timeout=5_000)
            welcome.wait_for(state="hidden")
        editor.click(force=True)
        page.keyboard.press("ControlOrMeta+a")
        page.keyboard.press("Backspace")
        page.keyboard.type(selection)
        # The focused editor's text (CodeMirror 5 hangs its instance on its wrapper); None
        # when the focus is no longer in an editor.
        typed = page.evaluate(
            "() => document.activeElement?.closest('.CodeMirror')?.CodeMirror?.getValue() ?? null"
        )
        if typed != selection:
            seen.append(f"attempt {attempt}: the focused editor held {typed!r}")
            continue
        page.keyboard.press("Enter")
        try:
            page.wait_for_url(re.compile(r"/asset-groups~"), timeout=20_000)
            if seen:
                print(f"the lineage filter took {selection!r} after: {'; '.join(seen)}")
            return
        except PlaywrightTimeout:
            seen.append(f"attempt {attempt}: Enter left the URL at {page.url}")
    raise AssertionError(f"the lineage filter did not take {selection!r}: {'; '.join(seen)}")


def launch_backfill(
    page: Page, ui: Ui, selection: str, partitions: str, count: int, shot: str | None = None
) -> str:
    """From the global lineage: filter to ``selection``, Materialize all -> the dialog's
    custom partition range -> Launch backfill; open the backfill from the toast; return
    the backfill page's URL once its status reads Succeeded."""
    page.get_by_role("link", name="View lineage").click()
    # The global lineage's groups, then its filter: a CodeMirror editor (offscreen textarea).
    page.get_by_text("downsample", exact=True).first.wait_for()
    apply_selection(page, selection)
    # "Materialize all…" or, for one asset, "Materialize…" (its accessible name also
    # holds its icon's name: match its text)
    page.get_by_role("button").filter(has_text=re.compile(r"^Materialize")).click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(re.compile(r"^Launch runs to materialize")).wait_for()
    field = dialog.get_by_placeholder("No matching partitions")
    field.click()
    field.fill(partitions)
    field.press("Enter")
    dialog.get_by_text(re.compile(rf"^{count} partitions?$")).wait_for()
    if shot:
        picture(page, ui, shot)
    dialog.get_by_role("button", name="Launch backfill").click()
    # The toast: "Created backfill <id>" with a View link to the backfill's page.
    page.get_by_text(re.compile(r"Created backfill \w+")).wait_for()
    page.get_by_role("link", name="View", exact=True).or_(
        page.get_by_role("button", name="View", exact=True)
    ).first.click()
    page.wait_for_url(re.compile(r"/runs/b/\w+"))

    def ended() -> str | None:
        body = page.inner_text("body")
        found = re.search(r"Status\s+(Succeeded|Failed|Canceled|Completed with failures)", body)
        return found.group(1) if found else None

    outcome = wait_for(
        ended, timeout=BACKFILL_TIMEOUT, what="the backfill page's status", interval=2
    )
    assert outcome == "Succeeded", f"backfill ended {outcome}"
    return page.url


def page_text_matching(page: Page, pattern: str, timeout: float = 30) -> str:
    """The page's text once ``pattern`` is found in it (AssertionError naming it if not)."""
    return wait_for(
        lambda: re.search(pattern, text := page.inner_text("body")) and text,
        timeout=timeout,
        what=f"the page to show {pattern!r}",
        interval=0.5,
    )


def expected_valid(engine: sa.Engine):
    raw = reference.load_raw(engine, data.DAY0, data.DAY0 + timedelta(days=1))
    catalogue = load_catalogue("hydroponics")
    return raw, reference.valid_readings(raw, catalogue, datetime.now(UTC)), catalogue


@pytest.fixture(scope="module")
def hourly_backfilled(ui: Ui, browser: object) -> str:
    """The hourly backfill, clicked once for the module's tests."""
    page = new_page(browser)
    started = time.monotonic()
    try:
        with shot_on_failure(page, ui, "hourly-backfill"):
            page.goto(f"{ui.base}/locations/agg_pipeline/asset-groups/rollups")
            page.get_by_text("rollup_hourly", exact=True).first.wait_for()
            page.get_by_text("rollup_daily", exact=True).first.wait_for()
            url = launch_backfill(
                page,
                ui,
                " or ".join(f"key:{k}" for k in HOURLY),
                f"[{DAY}-00:00...{DAY}-23:00]",
                24,
                shot="backfill-dialog",
            )
    finally:
        page.context.close()
    print(f"hourly backfill from the UI: {time.monotonic() - started:.0f} s")
    return url


def test_hourly_backfill_from_the_ui(ui: Ui, hourly_backfilled: str):
    _, valid, _ = expected_valid(ui.engine)
    got = table(ui.engine, "bi.hourly_sensor_agg", "hour_start")
    assert_matches(got, reference.grouped_stats(valid, valid["time"].dt.floor("1h")))


def test_daily_backfill_from_the_ui(ui: Ui, hourly_backfilled: str, page: Page):
    started = time.monotonic()
    with shot_on_failure(page, ui, "daily-backfill"):
        page.goto(f"{ui.base}/locations/agg_pipeline/asset-groups/rollups")
        page.get_by_text("rollup_daily", exact=True).first.wait_for()
        # Two days (one partition would be a run, not a backfill); the second is empty.
        launch_backfill(page, ui, "key:rollup_daily", f"[{DAY}...{NEXT_DAY}]", 2)
    print(f"daily backfill from the UI: {time.monotonic() - started:.0f} s")
    _, valid, _ = expected_valid(ui.engine)
    got = table(ui.engine, "bi.daily_sensor_agg", "metric_date")
    assert_matches(got, reference.grouped_stats(valid, reference.local_day(valid["time"], "UTC")))


def test_partition_page_shows_the_metadata(ui: Ui, hourly_backfilled: str, page: Page):
    """The hour that had bad readings: its page shows rows written, the rejected rows by
    reason (as pandas counts them over the run) and the preview table; the hourly rollup's
    page shows the chart of the day (24 hours: 24 bars a line)."""
    raw, _, catalogue = expected_valid(ui.engine)
    rejected = reference.rejected_by_reason(raw, catalogue, datetime.now(UTC))
    with shot_on_failure(page, ui, "partition-page"):
        page.goto(f"{ui.base}/assets/readings_1m?view=partitions&partition={BAD_HOUR}")
        # Markdown values (the preview) render a moment after the rest.
        body = page_text_matching(page, r"device\s+field\s+bucket\s+n\s+mean")
        for name in ("rows_written", "partition_rows_written", "preview", "raw_rows_read"):
            assert re.search(rf"^{name}$", body, re.M), f"{name} not on the page"
        shown = re.search(r"rejected_by_reason\s+(\{.*?\})", body, re.S)
        assert shown, "rejected_by_reason has no value on the page"
        assert json.loads(shown.group(1)) == rejected
        assert rejected["out_of_bounds"] > 0 and rejected["nan"] > 0  # the bad hour's rows

        # The hourly rollup's partition page carries the chart (defs/readings/charts.py).
        page.goto(f"{ui.base}/assets/rollup_hourly?view=partitions&partition={BAD_HOUR}")
        page_text_matching(page, r"temperature\s+[▁▂▃▄▅▆▇█]{24}\s+[▁▂▃▄▅▆▇█]{24}")
        chart = page.get_by_text("chart", exact=True)
        assert chart.count() == 1
        chart.scroll_into_view_if_needed()  # the metadata scrolls inside the page
        picture(page, ui, "partition-page")

    # The README's graph: the rollups group after the backfills.
    if ui.pictures is not None:
        page.goto(f"{ui.base}/locations/agg_pipeline/asset-groups/rollups")
        page.get_by_text("rollup_hourly", exact=True).first.wait_for()
        picture(page, ui, "asset-graph")
