"""The ops service's HTTP API: /metrics (lag exporter), /dashboard (built-in charts), /api/* (their data)."""

from __future__ import annotations

import math
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import orjson
from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from services.ops.collector import Collector
from services.ops.metrics import LatestState
from services.ops.settings import OpsSettings
from services.ops.views import VIEWS, longest_window_s, sample_names

STATIC = Path(__file__).parent / "static"
MAX_POINTS = 720  # per series in one response; longer ranges are thinned (rates are computed first)


def views_payload(collector: Collector, minutes: float, now: float | None = None) -> dict:
    """Every view's panels evaluated over the last `minutes`: timestamps plus aligned series (null = gap)."""
    now = time.time() if now is None else now
    since = now - minutes * 60
    frame = collector.history.frame(since - longest_window_s(), sample_names())
    keep = np.nonzero(frame.ts >= since)[0]
    if len(keep) > MAX_POINTS:
        keep = keep[np.linspace(0, len(keep) - 1, MAX_POINTS).astype(int)]
    views = []
    for view in VIEWS:
        panels = []
        for panel in view.panels:
            series = [{"label": s.label, "values": _json_values(s.values[keep])}
                      for q in panel.queries for s in q.evaluate(frame)]
            panels.append({"id": panel.id, "title": panel.title, "unit": panel.unit, "series": series})
        views.append({"name": view.name, "title": view.title, "panels": panels})
    return {"generated_at": now, "interval_s": collector.settings.ops_interval_s,
            "timestamps": [round(float(t), 3) for t in frame.ts[keep]], "views": views}


def _json(payload: dict) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json", headers={"Cache-Control": "no-store"})


def _json_values(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) or math.isinf(v) else round(v, 6) for v in values.tolist()]


def create_app(settings: OpsSettings, collector: Collector | None = None, start: bool = True) -> FastAPI:
    collector = collector or Collector(settings)
    exported = LatestState(collector.latest)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        REGISTRY.register(exported)
        if start:
            collector.start()
        try:
            yield
        finally:
            collector.stop()
            REGISTRY.unregister(exported)

    app = FastAPI(title="streamml ops", lifespan=lifespan)
    app.state.collector = collector
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "rounds": collector.history.rounds}

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/views")
    def api_views(minutes: float = Query(60.0, gt=0, le=24 * 60)) -> Response:
        return _json(views_payload(collector, minutes))

    @app.get("/api/summary")
    def api_summary() -> Response:
        return _json(collector.summary())

    return app
