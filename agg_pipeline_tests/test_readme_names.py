"""Every asset, schedule, sensor and job the README names exists in the definitions.

The README is for a newcomer: a name there that the UI does not show (a schedule renamed,
an asset removed) sends them looking for something that is not there. Names are taken
from the first column of the README's tables headed `asset`, `schedule` or `sensor`, and
from prose such as "schedule `x`", "job `x`", "sensor `x`" (patterns with `*` are skipped).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agg_pipeline.definitions import defs

KINDS = ("asset", "schedule", "sensor", "job")


def readme_names(text: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {k: set() for k in KINDS}
    kind = None
    for line in text.splitlines():
        header = re.match(r"^\|\s*(\w+)\s*\|", line)
        if header and not line.startswith("|`") and "`" not in line.split("|")[1]:
            kind = header.group(1) if header.group(1) in KINDS else None
            continue
        if not line.startswith("|"):
            kind = None
        elif kind:
            names = re.findall(r"`([a-z0-9_]+)`", line.split("|")[1])
            # "`execution_metrics_hourly` / `_daily`": a suffix replaces the first name's
            for name in names:
                full = names[0].rsplit("_", 1)[0] + name if name.startswith("_") else name
                found[kind].add(full)
    for kind in KINDS:
        for name in re.findall(rf"\b{kind}s? `([a-z0-9_]+)`", text, re.I):
            found[kind].add(name)
    return found


def defined_names() -> dict[str, set[str]]:
    repo = defs.get_repository_def()
    return {
        "asset": {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()},
        "schedule": {s.name for s in repo.schedule_defs},
        "sensor": {s.name for s in repo.sensor_defs},
        "job": {j.name for j in repo.get_all_jobs()},
    }


def test_readme_names_exist(project_root: Path):
    named = readme_names((project_root / "README.md").read_text())
    defined = defined_names()
    missing = {k: sorted(named[k] - defined[k]) for k in KINDS if named[k] - defined[k]}
    assert not missing, f"named in README.md but not defined: {missing}"
    # The parse finds the tables at all (a README reshaped would pass vacuously).
    assert {"rollup_hourly", "readings_1m"} <= named["asset"]
    assert "readings_1m_every_minute" in named["schedule"]
    assert "self_healing_sensor" in named["sensor"]


@pytest.mark.parametrize(
    "line, kind, name",
    [
        ("| `rollup_daily_at_0130` | `30 1 * * *` |", "schedule", "rollup_daily_at_0130"),
        ("Schedule `conditions_daily_at_0130` runs", "schedule", "conditions_daily_at_0130"),
    ],
)
def test_a_wrong_name_is_found(line: str, kind: str, name: str):
    text = f"| {kind} | cron |\n|---|---|\n{line}\n" if line.startswith("|") else line
    assert name in readme_names(text)[kind]
    assert name not in defined_names()[kind]
