"""Grafana dashboards generated from the ops views (one dashboard per view), written to deploy/grafana.

Checked in as JSON so Grafana provisioning needs no Python; a test regenerates them and fails when the
files and `VIEWS` disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from services.ops.views import VIEWS, Panel, View

DATASOURCE = {"type": "prometheus", "uid": "streamml-prometheus"}
# our unit label -> Grafana unit id (anything else is shown as a plain number with the label on the axis)
UNITS = {"ms": "ms", "s": "s", "%": "percent", "req/s": "reqps", "events/s": "short", "records/s": "short"}


def _panel(panel: Panel, index: int) -> dict:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": UNITS.get(panel.unit, "short"),
                                     "custom": {"axisLabel": panel.unit, "lineWidth": 1, "fillOpacity": 5}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": q.promql(),
                     "legendFormat": q.grafana_legend() or panel.title}
                    for i, q in enumerate(panel.queries)],
    }


def dashboard(view: View) -> dict:
    """Grafana dashboard JSON (schema 39) for one view, linked to the other streamml dashboards."""
    return {
        "uid": f"streamml-{view.name}",
        "title": f"streamml / {view.title}",
        "tags": ["streamml"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "templating": {"list": []},
        "links": [{"type": "dashboards", "tags": ["streamml"], "asDropdown": False, "title": "streamml",
                   "includeVars": False, "keepTime": True}],
        "panels": [_panel(p, i) for i, p in enumerate(view.panels)],
    }


def render_all() -> dict[str, str]:
    """file name -> JSON text of every dashboard."""
    return {f"{view.name}.json": json.dumps(dashboard(view), indent=2) + "\n" for view in VIEWS}


def write_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_all().items():
        path = out_dir / name
        path.write_text(text)
        paths.append(path)
    return paths
