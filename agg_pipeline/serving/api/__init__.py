"""The HTTP API (``agg-pipeline serve``): the old systems' endpoints over the rollups.

``create_app(engine, etl=None)`` builds the FastAPI app; one module per router:
``analytics`` (seed 002's ``/api/v1/analytics/...``), ``etl`` (seed 004's ``/api/etl/...``).
"""

from agg_pipeline.serving.api.app import create_app

__all__ = ["create_app"]
