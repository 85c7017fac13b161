"""Config is data: bad catalogues and settings fail at load, naming the key."""

from __future__ import annotations

import pytest

from agg_pipeline.config.catalogue import SHIPPED, CatalogueError, load_catalogue, parse_catalogue
from agg_pipeline.config.settings import SettingsError, load_settings

GOOD = """
name: farm
sample_interval_seconds: 30
fields:
  ph: {sensor_type: PH_SENSOR, unit: pH, min: 0, max: 14, optimal: {min: 5.5, max: 6.5}}
"""


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_catalogues_load(name):
    cat = load_catalogue(name)
    assert cat.name == name and cat.fields


def test_hydroponics_fields_and_units():
    cat = load_catalogue("hydroponics")
    assert {f: s.unit for f, s in cat.fields.items()} == {
        "temperature": "C",
        "humidity": "%",
        "ph": "pH",
        "ec": "mS/cm",
        "water_level": "%",
        "water_temp": "C",
        "light": "lux",
    }


def test_catalogue_from_path(tmp_path, monkeypatch):
    path = tmp_path / "farm.yaml"
    path.write_text(GOOD)
    assert load_catalogue(str(path)).fields["ph"].optimal.max == 6.5


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (GOOD.replace("max: 14", "max: -1"), "fields.ph"),
        (GOOD.replace("unit: pH", "unit: pH, colour: red"), "fields.ph.colour"),
        (
            GOOD.replace("sample_interval_seconds: 30", "sample_interval_seconds: 0"),
            "sample_interval_seconds",
        ),
        (GOOD + "source: {table: 'raw.readings; DROP TABLE x'}\n", "source.table"),
        (GOOD.replace("min: 5.5", "min: -3"), "fields.ph"),  # optimal outside bounds
        ("name: farm\nsample_interval_seconds: 1\nfields: {}\n", "fields"),
        ("fields: [1, 2", "not valid YAML"),
    ],
)
def test_bad_catalogue_names_the_key(text, names):
    with pytest.raises(CatalogueError) as err:
        parse_catalogue(text, "farm.yaml")
    assert "farm.yaml" in str(err.value) and names in str(err.value)


def test_unknown_catalogue_lists_choices():
    with pytest.raises(CatalogueError, match="hydroponics"):
        load_catalogue("no-such-catalogue")


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("AGG_PIPELINE_TIMEZONE", "Mars/Olympus"),
        ("AGG_PIPELINE_START_DATE", "yesterday"),
        ("AGG_PIPELINE_WORK_MEM", "lots"),
        ("AGG_PIPELINE_MAX_GAP_SECONDS", "-5"),
        ("DATABASE_URL", "mysql://root@localhost/x"),
    ],
)
def test_bad_setting_names_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        load_settings()


def test_database_url_names_psycopg2_and_stays_out_of_repr(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:s3cret@db.example/wh")
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg2://u:s3cret@db.example/wh"
    assert "s3cret" not in repr(settings)
