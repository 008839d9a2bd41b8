"""The Grafana dashboards in deploy/grafana are generated from the ops views and stay in step with them;
every panel's PromQL parses (checked by promtool) and reads only metrics streamml exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.ops.grafana import DATASOURCE, render_all
from services.ops.views import VIEWS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "grafana"


def _dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((DEPLOY / "dashboards").glob("*.json"))}


def test_checked_in_dashboards_equal_the_generated_ones():
    checked_in = {p.name: p.read_text() for p in (DEPLOY / "dashboards").glob("*.json")}
    assert checked_in == render_all(), "dashboards are stale: run `streamml dashboards` and commit the result"


def test_dashboards_are_importable_grafana_models():
    boards = _dashboards()
    assert set(boards) == {f"{v.name}.json" for v in VIEWS}
    uids = set()
    for name, board in boards.items():
        assert board["uid"] not in uids and len(board["uid"]) <= 40
        uids.add(board["uid"])
        assert board["schemaVersion"] >= 36 and board["title"].startswith("streamml / ")
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            assert panel["type"] == "timeseries" and panel["datasource"] == DATASOURCE
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs))
    provisioned = yaml.safe_load((DEPLOY / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert provisioned["datasources"][0]["uid"] == DATASOURCE["uid"]


def test_every_panel_query_parses_in_promtool(tmp_path: Path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: `apt-get install prometheus` (CI installs it)")
    exprs = [t["expr"] for board in _dashboards().values() for p in board["panels"] for t in p["targets"]]
    rules = {"groups": [{"name": "dashboard-queries", "rules": [
        {"record": f"streamml:dashboard_query_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_panels_read_only_metrics_that_exist():
    import prometheus_client

    import services.inference.metrics  # noqa: F401  (registers the metrics below)
    import services.ops.metrics  # noqa: F401
    import streams.cdc.metrics  # noqa: F401
    import streams.drift.job  # noqa: F401
    import streams.flows.metrics  # noqa: F401
    from services.ops.views import LAG_MESSAGES, LAG_SECONDS, TARGET_UP

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {m.name + s for m in prometheus_client.REGISTRY.collect() for s in suffixes.get(m.type, ("",))}
    exported |= {LAG_MESSAGES, LAG_SECONDS, TARGET_UP}  # exported by the ops collector from live state
    for board in _dashboards().values():
        for panel in board["panels"]:
            for target in panel["targets"]:
                for name in re.findall(r"\bstreamml_[a-z0-9_]+", target["expr"]):
                    if name.startswith("streamml:"):
                        continue
                    assert name in exported, (panel["title"], name)
