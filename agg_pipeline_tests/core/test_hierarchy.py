"""The one registry of levels (core/hierarchy.py) agrees with the Dagster graph, and the
views derived from it are what the writers, checks, retention and the sink use."""

from __future__ import annotations

from dataclasses import replace

import dagster as dg
import pytest

from agg_pipeline import status
from agg_pipeline.config import settings
from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.config.settings import Settings
from agg_pipeline.core import hierarchy
from agg_pipeline.definitions import defs
from agg_pipeline.defs.readings import checks
from agg_pipeline.influx import sink as influx_sink
from agg_pipeline.warehouse import healing, levels, realtime, retention

PARTITIONS = {
    "hourly": "0 * * * *",
    "daily": "0 0 * * *",
    "weekly": "0 0 * * 1",
    "monthly": "0 0 1 * *",
}


def test_every_level_is_the_asset_the_registry_says():
    graph = defs.resolve_asset_graph()
    for level in hierarchy.LEVELS:
        node = graph.get(dg.AssetKey(level.asset))
        pdef = node.partitions_def
        assert pdef.cron_schedule == PARTITIONS[level.grain.value], level.key
        if level.parent is None:
            continue
        upstream = {k.to_user_string() for k in node.parent_keys}
        assert upstream == set(hierarchy.upstream_assets(level)), level.key
        assert level.table in (node.description or ""), level.key


def test_settings_named_by_the_registry_exist():
    fields = settings.Settings.model_fields
    for level in hierarchy.LEVELS:
        for name in (level.retention_setting, level.schedule_setting, level.median_setting):
            assert name is None or name in fields, (level.key, name)


def test_views_derived_from_the_registry():
    derived = hierarchy.DERIVED
    assert [lv.key for lv in derived] == ["1m", "5m", "hourly", "daily", "weekly", "monthly"]
    assert set(checks.LEVELS) == {lv.asset for lv in derived}
    assert {a: t for a, t in status.TABLES.items() if a in checks.LEVELS} == {
        lv.asset: lv.table for lv in derived
    }
    assert influx_sink._LEVELS == {"1m": ("bi.readings_1m", 60), "5m": ("bi.readings_5m", 300)}
    aged = {t: field for t, _, _, field in retention.AGED_TABLES}
    assert aged["bi.hourly_medians"] == aged["bi.hourly_sensor_agg"] == "hourly_days"
    assert "bi.daily_sensor_agg" not in aged and "bi.weekly_sensor_agg" not in aged
    assert "bi.monthly_sensor_agg" not in aged
    for level in derived:
        assert healing.BY_ASSET[level.asset].parents == hierarchy.upstream_assets(level)
    # The real-time views: one per level with a watermark, over that level's table.
    views = " ".join(realtime.view_statements(load_catalogue("hydroponics"), Settings()))
    for level in hierarchy.LEVELS:
        assert (f"VIEW {level.table}_realtime" in views) is level.watermark, level.key
    # The SQL of a level follows its parent: dates for a local-date key, computed rows only
    # where imported history lives.
    weekly = levels.parts_sql(hierarchy.LEVEL_WEEKLY)
    assert "FROM bi.daily_sensor_agg WHERE metric_date >= :start_date" in weekly
    assert weekly.endswith("AND origin = 'computed'")
    assert "date_bin('5 minutes', window_start, :origin)" in levels.parts_sql(hierarchy.LEVEL_5M)
    monthly = levels.parts_sql(hierarchy.LEVEL_MONTHLY)
    assert "date_trunc('month', metric_date)::date" in monthly


def test_a_registry_a_writer_cannot_follow_is_refused():
    orphan = replace(hierarchy.LEVEL_WEEKLY, key="yearly", parent="quarterly")
    with pytest.raises(ValueError, match="parent 'quarterly' must come before it"):
        hierarchy._validate((*hierarchy.LEVELS, orphan))
    with pytest.raises(ValueError, match="unique"):
        hierarchy._validate((*hierarchy.LEVELS, hierarchy.LEVEL_5M))
    stepless = replace(hierarchy.LEVEL_5M, key="10m", step=None)
    with pytest.raises(ValueError, match="a step exactly when"):
        hierarchy._validate((*hierarchy.LEVELS, stepless))
