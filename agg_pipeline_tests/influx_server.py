"""A local HTTP server that speaks the parts of the InfluxDB 2.x API agg_pipeline uses.

The real ``influxdb-client`` talks to it over a real socket. It stores written points and
answers agg_pipeline's Flux queries by computing, with pandas over the stored points, what
the query's Flux asks for (each query names itself and its parameters in its first line),
in InfluxDB's annotated-CSV format. It records every request (method, path, arguments,
headers, decoded body) for the contract tests, and can be told to fail the next requests
(any status with headers and body, or a connection reset mid-response).

What this proves and what it does not: the requests, the parsing of InfluxDB's responses
and everything downstream are real; the *meaning* of our Flux is checked by InfluxData's
parser and type checker (``fluxcheck``) and by this server's independent reading of it -
only a live InfluxDB (the opt-in live tests) proves the server computes the same.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from agg_pipeline.influx.flux import parse_header


@dataclass
class Recorded:
    method: str
    path: str
    args: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Fault:
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    reset: bool = False  # send half a response, then drop the connection


# ---------------------------------------------------------------------- line protocol
_LINE = re.compile(r"^((?:[^ \\]|\\.)+) ((?:[^ \\\"]|\\.|\"(?:[^\"\\]|\\.)*\")+) (\d+)$")


def _split(text: str, sep: str) -> list[str]:
    out, cur, quoted, i = [], "", False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur += text[i : i + 2]
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c == sep and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    out.append(cur)
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_line(line: str, precision: str) -> list[dict]:
    """Points of one line-protocol line: one dict per field."""
    m = _LINE.match(line)
    if not m:
        raise ValueError(f"bad line protocol: {line!r}")
    key, fields, ts = m.groups()
    parts = _split(key, ",")
    measurement, tags = _unescape(parts[0]), {}
    for p in parts[1:]:
        k, v = _split(p, "=")
        tags[_unescape(k)] = _unescape(v)
    scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[precision]
    time = pd.Timestamp(int(ts) * scale, unit="ns", tz="UTC")
    out = []
    for f in _split(fields, ","):
        k, v = f.split("=", 1)
        if v.startswith('"'):
            value: object = _unescape(v[1:-1])
        elif v.endswith("i"):
            value = int(v[:-1])
        elif v in ("true", "false"):
            value = v == "true"
        else:
            value = float(v)
        out.append({"_measurement": measurement, **tags, "_field": _unescape(k),
                    "_value": value, "_time": time})  # fmt: skip
    return out


# ---------------------------------------------------------------------- annotated CSV
def _datatype(series: pd.Series) -> str:
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return "dateTime:RFC3339"
    if pd.api.types.is_bool_dtype(series):
        return "boolean"
    if pd.api.types.is_integer_dtype(series):
        return "long"
    if pd.api.types.is_float_dtype(series):
        return "double"
    return "string"


def _cells(series: pd.Series) -> pd.Series:
    """A column as annotated-CSV cells (vectorized: answers can be 100k rows)."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        out = series.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    elif pd.api.types.is_bool_dtype(series):
        out = series.map({True: "true", False: "false"})
    elif pd.api.types.is_float_dtype(series):
        out = series.map(repr)  # repr: the shortest text that reads back exactly
    else:
        out = series.astype(str)
        quote = out.str.contains('[,"\n]', regex=True)
        out = out.where(~quote, '"' + out.str.replace('"', '""') + '"')
    return out.where(series.notna(), "")


def annotated_csv(results: list[tuple[str, pd.DataFrame, list[str]]]) -> str:
    """InfluxDB's annotated CSV: per result, one table per group key, a header block per
    result (tables sharing columns share it, as InfluxDB does)."""
    out = io.StringIO()
    first_id = 0
    for name, frame, group in results:
        if frame.empty:
            continue
        columns = list(frame.columns)
        out.write(
            "#datatype,string,long," + ",".join(_datatype(frame[c]) for c in columns) + "\r\n"
        )
        out.write("#group,false,false," + ",".join(
            "true" if c in group else "false" for c in columns) + "\r\n")  # fmt: skip
        out.write(f"#default,{name},," + "," * (len(columns) - 1) + "\r\n")
        out.write(",result,table," + ",".join(columns) + "\r\n")
        ids = frame.groupby(group, sort=True, dropna=False).ngroup()
        order = ids.sort_values(kind="stable").index
        frame, ids = frame.loc[order], ids.loc[order] + first_id
        line = ",," + ids.astype(str)
        for c in columns:
            line = line + "," + _cells(frame[c])
        out.write("\r\n".join(line) + "\r\n\r\n")
        first_id = int(ids.max()) + 1
    return out.getvalue()


# ------------------------------------------------------------------ Flux, read in pandas
def _t(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC")


class FakeInflux:
    """Points by bucket, answers, faults and the request log of one test server."""

    def __init__(self, server: HTTPServer, org: str = "agg-org", token: str = "test-token"):
        self.server, self.org, self.token = server, org, token
        self.points: dict[str, pd.DataFrame] = {}
        self.requests: list[Recorded] = []
        self.faults: list[tuple[str, Fault]] = []
        self.buckets: dict[str, dict] = {}
        self.tasks: dict[str, dict] = {}
        self.lock = threading.Lock()
        server.expect_request(re.compile(".*")).respond_with_handler(self.handle)

    @property
    def url(self) -> str:
        return self.server.url_for("/").rstrip("/")

    # ---------------------------------------------------------------------- set-up
    def add_points(self, bucket: str, frame: pd.DataFrame) -> None:
        """frame: _time, _measurement, _field, _value and tag columns."""
        with self.lock:
            old = self.points.get(bucket)
            self.points[bucket] = frame if old is None else pd.concat([old, frame])

    def fail_next(self, path_prefix: str, *faults: Fault) -> None:
        self.faults.extend((path_prefix, f) for f in faults)

    # --------------------------------------------------------------------- serving
    def handle(self, request: Request) -> Response:
        body = request.get_data()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.requests.append(Recorded(request.method, request.path, dict(request.args),
                                      dict(request.headers), body))  # fmt: skip
        for i, (prefix, fault) in enumerate(self.faults):
            if request.path.startswith(prefix):
                del self.faults[i]
                return self._fault(fault)
        if request.path == "/health":  # InfluxDB answers /health without a token
            return _json(200, {"name": "influxdb", "status": "pass", "version": "v2.7-test"})
        if request.headers.get("Authorization") != f"Token {self.token}":
            return _json(401, {"code": "unauthorized", "message": "unauthorized access"})
        path = request.path
        if path == "/api/v2/query" and request.method == "POST":
            return self._query(json.loads(body))
        if path == "/api/v2/write" and request.method == "POST":
            return self._write(request.args, body.decode())
        if path == "/api/v2/buckets":
            return self._buckets(request, body)
        if path.startswith("/api/v2/buckets/"):
            return self._bucket(request, path.rsplit("/", 1)[1], body)
        if path == "/api/v2/orgs":
            return _json(200, {"orgs": [{"id": "0000000000000001", "name": self.org}]})
        if path.startswith("/api/v2/tasks"):
            return self._tasks(request, body)
        return _json(404, {"code": "not found", "message": f"path not found: {path}"})

    def _fault(self, fault: Fault) -> Response:
        if fault.reset:

            def broken():
                yield b"#datatype,string,long,double\r\n#group,false,false,false\r\n"
                raise ConnectionResetError("test: connection dropped mid-response")

            return Response(
                broken(),
                status=200,
                headers={"Content-Length": "100000", "Content-Type": "text/csv"},
            )
        return Response(fault.body, status=fault.status, headers=fault.headers,
                        content_type="application/json")  # fmt: skip

    def _write(self, args, text: str) -> Response:
        bucket = args.get("bucket")
        if bucket not in self.buckets and bucket not in self.points:
            return _json(404, {"code": "not found", "message": f'bucket "{bucket}" not found'})
        rows = [p for line in text.splitlines() if line for p in parse_line(line, args.get(
            "precision", "ns"))]  # fmt: skip
        if rows:
            frame = pd.DataFrame(rows)
            with self.lock:
                old = self.points.get(bucket)
                merged = frame if old is None else pd.concat([old, frame], ignore_index=True)
                # Same series and time: the later point wins (InfluxDB's overwrite).
                key = [c for c in merged.columns if c not in ("_value",)]
                merged = merged.drop_duplicates(subset=key, keep="last")
                self.points[bucket] = merged.reset_index(drop=True)
        return Response(status=204)

    def _buckets(self, request: Request, body: bytes) -> Response:
        if request.method == "GET":
            name = request.args.get("name")
            found = [b for n, b in self.buckets.items() if name in (None, n)]
            return _json(200, {"buckets": found})
        data = json.loads(body)
        bucket = {
            "id": f"{len(self.buckets) + 1:016x}",
            "name": data["name"],
            "orgID": data.get("orgID"),
            "retentionRules": data.get("retentionRules", []),
        }
        self.buckets[data["name"]] = bucket
        return _json(201, bucket)

    def _bucket(self, request: Request, bucket_id: str, body: bytes) -> Response:
        """GET / PATCH / DELETE /api/v2/buckets/{id} (PATCH: description, retentionRules)."""
        found = next((b for b in self.buckets.values() if b["id"] == bucket_id), None)
        if found is None:
            return _json(404, {"code": "not found", "message": "bucket not found"})
        if request.method == "DELETE":
            del self.buckets[found["name"]]
            self.points.pop(found["name"], None)
            return Response(status=204)
        if request.method == "PATCH":
            data = json.loads(body)
            found.update({k: v for k, v in data.items() if k in ("retentionRules",
                                                                "description")})  # fmt: skip
        return _json(200, found)

    def _tasks(self, request: Request, body: bytes) -> Response:
        parts = request.path.rstrip("/").split("/")
        if len(parts) == 4:  # /api/v2/tasks
            return _json(200, {"tasks": list(self.tasks.values())})
        task = self.tasks.get(parts[4])
        if task is None:
            return _json(404, {"code": "not found", "message": "task not found"})
        if request.method == "DELETE":
            del self.tasks[parts[4]]
            return Response(status=204)
        if request.method == "PATCH":
            task.update({k: v for k, v in json.loads(body).items() if k in ("status",)})
        return _json(200, task)

    def add_task(self, name: str, status: str = "active", every: str = "1m") -> str:
        task_id = f"{len(self.tasks) + 1:016x}"
        self.tasks[task_id] = {
            "id": task_id,
            "name": name,
            "status": status,
            "every": every,
            "orgID": "0000000000000001",
            "flux": "// old task",
        }
        return task_id

    # ------------------------------------------------------------------------ queries
    def _query(self, payload: dict) -> Response:
        try:
            params = parse_header(payload["query"])
        except ValueError:
            return Response(annotated_csv([]), status=200, content_type="text/csv")
        bucket = params["bucket"]
        if bucket not in self.buckets and bucket not in self.points:
            message = f'failed to initialize execute state: could not find bucket "{bucket}"'
            return _json(404, {"code": "not found", "message": message})
        points = self.points.get(bucket)
        if points is None or points.empty:
            return Response("\r\n", status=200, content_type="text/csv")
        answer = getattr(self, "_" + params["kind"])(params)
        return Response(annotated_csv(answer), status=200, content_type="text/csv")

    def _data(self, p: dict, fields: list[str] | None) -> pd.DataFrame:
        points = self.points.get(
            p["bucket"], pd.DataFrame(columns=["_time", "_measurement", "_field", "_value"])
        )
        start, stop = _t(p["start"]), _t(p["stop"])
        d = points[(points["_time"] >= start) & (points["_time"] < stop)
                   & (points["_measurement"] == p["measurement"])]  # fmt: skip
        if fields is not None:
            d = d[d["_field"].isin(fields)]
        # Tags of other measurements (stat_type on the sink's points) are no columns here.
        d = d.dropna(axis=1, how="all").copy()
        d["_start"], d["_stop"] = start, stop
        return d

    def _valid(self, d: pd.DataFrame, bounds: dict) -> pd.DataFrame:
        lo = d["_field"].map({f: b[0] for f, b in bounds.items()})
        hi = d["_field"].map({f: b[1] for f, b in bounds.items()})
        v = d["_value"].astype(float)
        return d[(v >= lo) & (v <= hi)]

    def _series(self, d: pd.DataFrame) -> list[str]:
        return [c for c in d.columns if c not in ("_time", "_value", "_start", "_stop")]

    def _partials_1m(self, p: dict):
        d = self._data(p, list(p["bounds"]))
        v = self._valid(d, p["bounds"]).copy()
        series = self._series(d)
        v["_value"] = v["_value"].astype(float)
        v["w"] = v["_time"].dt.floor("1min")
        g = v.groupby(series + ["w", "_start", "_stop"])["_value"]
        out = []
        for fn, agg in (("count", g.count()), ("mean", g.mean()), ("min", g.min()),
                        ("max", g.max()), ("stddev", g.std(ddof=1))):  # fmt: skip
            frame = agg.reset_index().rename(columns={"w": "_time"})
            out.append((fn, frame[["_start", "_stop", "_time", "_value", *series]], series))
        v = v.sort_values("_time")
        for fn, keep in (("first", "first"), ("last", "last")):
            sel = v.drop_duplicates(series + ["w"], keep=keep).copy()
            sel["_start"] = sel["w"]
            sel["_stop"] = sel["w"] + pd.Timedelta(minutes=1)
            out.append((fn, sel[["_start", "_stop", "_time", "_value", *series]],
                        series + ["_start", "_stop"]))  # fmt: skip
        offset = pd.Timedelta(seconds=p["hour_offset"])
        v["h"] = (v["_time"] - offset).dt.floor("1h") + offset
        med = v.groupby(series + ["h", "_start", "_stop"])["_value"].median().reset_index()
        med = med.rename(columns={"h": "_time"})
        out.append(("hour_median", med[["_start", "_stop", "_time", "_value", *series]], series))
        rows = d.groupby(series + ["_start", "_stop"]).size().rename("_value").reset_index()
        out.append(("rows", rows[["_start", "_stop", "_value", *series]], series))
        return out

    def _period_summary(self, p: dict):
        bands = p["bands"]
        fields = list(p["bounds"]) if p["with_medians"] else [f for f in p["bounds"] if f in bands]
        d = self._data(p, fields)
        d = d[d["_time"] <= _t(p["latest_allowed"])]
        v = self._valid(d, p["bounds"]).copy()
        v["_value"] = v["_value"].astype(float)
        series = self._series(d)
        out = []
        if p["with_medians"]:
            g = v.groupby(series + ["_start", "_stop"])["_value"]
            for fn, agg in (("count", g.count()), ("median", g.median())):
                frame = agg.reset_index()
                out.append((fn, frame[["_start", "_stop", "_value", *series]], series))
        if bands:
            b = v[v["_field"].isin(bands)].sort_values("_time").copy()
            nxt = b.groupby(series)["_time"].shift(-1).fillna(b["_stop"])
            held = (nxt - b["_time"]).dt.total_seconds().clip(upper=p["max_gap_seconds"])
            b["held"] = held

            omin, omax, cb, ca = (b["_field"].map({f: v[i] for f, v in bands.items()})
                                  for i in range(4))  # fmt: skip
            x = b["_value"]
            b["class"] = np.select(
                [(x >= omin) & (x <= omax), (x < cb) | (x > ca)],
                ["optimal", "critical"],
                "acceptable",
            )
            keys = [p["device_tag"], *p.get("tags", []), "_field", "class"]
            c = b.groupby(keys).agg(n=("held", "size"), held=("held", "sum"))
            out.append(("classes", c.reset_index()[[*keys, "n", "held"]], keys))
        return out

    def _hourly_fingerprints(self, p: dict):
        d = self._data(p, None)
        series = self._series(d)
        offset = pd.Timedelta(seconds=p["hour_offset"])
        d["h"] = (d["_time"] - offset).dt.floor("1h") + offset
        cnt = d.groupby(series + ["h", "_start", "_stop"]).size().rename("_value").reset_index()
        cnt = cnt.rename(columns={"h": "_time"})
        last = d.sort_values("_time").drop_duplicates(series + ["h"], keep="last").copy()
        last["_start"], last["_stop"] = last["h"], last["h"] + pd.Timedelta(hours=1)
        last["_value"] = last["_value"].astype(str)
        return [
            ("count", cnt[["_start", "_stop", "_time", "_value", *series]], series),
            ("last", last[["_start", "_stop", "_time", "_value", *series]],
             series + ["_start", "_stop"]),
        ]  # fmt: skip

    def _aggregate_history(self, p: dict):
        """The old tasks' aggregate points, one result per stat_type (keep() drops the rest)."""
        points = self.points[p["bucket"]]
        start, stop = _t(p["start"]), _t(p["stop"])
        d = points[(points["_time"] >= start) & (points["_time"] < stop)
                   & points["_field"].isin(p["fields"])]  # fmt: skip
        if p.get("measurement") is not None:
            d = d[d["_measurement"] == p["measurement"]]
        tag = p["device_tag"]
        columns = ["_time", "_field", "_value", tag]
        return [
            (stat, d[d["stat_type"] == stat][columns], ["_field", tag])
            for stat in ("mean", "min", "max", "count")
        ]

    def _sink_windows(self, p: dict):
        d = self._data(p, None)
        series = self._series(d)
        return [("windows", d[["_start", "_stop", "_time", "_value", *series]], series)]

    def _patterns(self, p: dict) -> pd.DataFrame:
        d = self._data(p, None)
        for tag, value in p.get("tags", {}).items():
            d = d[d[tag] == value] if tag in d else d.iloc[0:0]
        return d

    def _pattern_rows(self, p: dict):
        d = self._patterns(p)
        if d.empty:
            return []
        d = d.dropna(axis=1, how="all")  # tags of other measurements
        keys = [c for c in self._series(d) if c != "_field"]
        wide = d.set_index([*keys, "_start", "_stop", "_time", "_field"])["_value"]
        wide = wide.unstack("_field").reset_index()
        for c in wide.columns:  # each field column typed as InfluxDB types it
            wide[c] = pd.Series(wide[c].tolist(), index=wide.index).infer_objects()
        return [("rows", wide, [*keys, "_start", "_stop"])]

    def _pattern_aggregate(self, p: dict):
        d = self._patterns(p)
        d = d[d["_field"] == p["metric"]]
        values = d.assign(_value=d["_value"].astype(float)).groupby(p["key"])["_value"]
        agg = {"sum": values.sum, "mean": values.mean, "count": values.count}[p["how"]]()
        return [("aggregate", agg.reset_index()[[p["key"], "_value"]], [p["key"]])]


def _json(status: int, data: dict) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json")


def readings_to_points(raw: pd.DataFrame, measurement: str, device_tag: str) -> pd.DataFrame:
    """Raw readings (time, device, field, value) as InfluxDB points."""
    return pd.DataFrame({
        "_time": pd.to_datetime(raw["time"], utc=True),
        "_measurement": measurement,
        device_tag: raw["device"].astype(str).to_numpy(),
        "_field": raw["field"].astype(str).to_numpy(),
        "_value": raw["value"].astype(float).to_numpy(),
    })  # fmt: skip


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)
