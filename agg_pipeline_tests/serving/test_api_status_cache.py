"""The ETL status' cache of the Dagster side, where the timing is the point: a backend
that answers before its callback is registered must not leave the request waiting."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from types import SimpleNamespace

from agg_pipeline.serving.api import etl


class _DoneAtSubmit:
    """An executor whose futures are finished when submit returns: the fastest backend
    (no DAGSTER_HOME, or one that fails at once) as the race can deliver it."""

    def submit(self, fn):  # noqa: ANN001, ANN201
        future: Future = Future()
        future.set_result(fn())
        return future


class _Backend:
    calls = 0

    def dagster_side(self) -> etl.DagsterSide:
        self.calls += 1
        return etl.DagsterSide(
            dagster_reachable=True, scheduler_running=True, influx_connected=None
        )


def test_an_answer_ready_at_submit_returns_and_is_cached(monkeypatch):
    monkeypatch.setattr(etl, "_executor", _DoneAtSubmit())
    backend, state = _Backend(), SimpleNamespace(status_ttl=60.0)
    answers: list[etl.DagsterSide] = []
    worker = threading.Thread(
        target=lambda: answers.extend(etl._dagster(backend, 5.0, state) for _ in range(3)),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the status request waits on its own lock"
    assert [a.scheduler_running for a in answers] == [True, True, True]
    assert backend.calls == 1  # the next two came from the cache
    assert state.dagster_pending is None
