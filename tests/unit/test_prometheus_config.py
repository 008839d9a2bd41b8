"""deploy/prometheus stays valid: promtool accepts both configs and the rules, the rules' unit tests
pass, and every `streamml_*` metric the rules (and their tests) use is one the code exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
ALERTS = PROM / "alerts.yml"
ALERTS_TEST = PROM / "alerts_test.yml"

# Exposed sample names per family type (prometheus_client strips `_total` from counter family names).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _promtool(*args: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `apt-get install prometheus` (Debian ships promtool in it); "
                    ".ci/run installs it on CI")
    proc = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (f"promtool {' '.join(args)} exited {proc.returncode}\n"
                                  f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")


@pytest.mark.parametrize("config", ["prometheus.yml", "embedded.yml"])
def test_promtool_check_config(config):
    _promtool("check", "config", f"deploy/prometheus/{config}")


def test_promtool_check_rules():
    _promtool("check", "rules", "deploy/prometheus/alerts.yml")


def test_promtool_rule_unit_tests():
    _promtool("test", "rules", "deploy/prometheus/alerts_test.yml")


def _exported() -> tuple[set[str], set[str]]:
    """(sample names a scrape shows, family names) of every streamml process's metrics."""
    from prometheus_client import REGISTRY

    import services.inference.metrics  # noqa: F401  (each import registers its metrics)
    import services.registry.metrics  # noqa: F401
    import streams.cdc.metrics  # noqa: F401
    import streams.drift.job  # noqa: F401
    import streams.flows.metrics  # noqa: F401
    from services.ops.metrics import LatestState

    # The ops service's lag and target gauges come from a custom collector it registers at startup
    # (services/ops/metrics.py); collect it directly so the names are the ones it really exports.
    families = [*REGISTRY.collect(), *LatestState(lambda: ([], {})).collect()]
    samples, names = set(), set()
    for family in families:
        names.add(family.name)
        samples |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
        samples |= {s.name for s in family.samples}
    return samples, names


def _streamml_names(text: str) -> set[str]:
    """Whole identifiers starting with `streamml_` (recording rules like `job:streamml_x:y` excluded)."""
    return {m for m in _IDENT.findall(text) if m.startswith("streamml_")}


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_every_streamml_metric_in_the_rules_is_exported():
    samples, families = _exported()
    for rule in _rules():
        what = rule.get("alert") or rule.get("record")
        unknown = _streamml_names(rule["expr"]) - samples
        assert not unknown, f"{what} queries {sorted(unknown)}, which no streamml process exports"
        for key, text in (rule.get("annotations") or {}).items():
            unknown = _streamml_names(text) - samples - families
            assert not unknown, f"{what}'s {key} names {sorted(unknown)}, which no streamml process exports"


def test_every_recording_rule_used_is_defined_and_every_streamml_alert_is_labelled():
    rules = _rules()
    recorded = {r["record"] for r in rules if "record" in r}
    for rule in rules:
        used = {m for m in _IDENT.findall(rule["expr"]) if ":" in m}
        assert used <= recorded, f"{rule.get('alert') or rule.get('record')} uses undefined {sorted(used - recorded)}"
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_rule_unit_tests_feed_real_metrics_and_cover_every_alert():
    samples, _ = _exported()
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    for test in tests:
        for series in test.get("input_series", []):
            name = _IDENT.match(series["series"]).group(0)
            assert not name.startswith("streamml_") or name in samples, f"alerts_test.yml feeds unknown {name}"
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    # promtool compares the whole list of alerts, so a firing case also shows its other series quiet;
    # an explicit `exp_alerts: []` case per alert keeps the "does not fire" side visible.
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert alerts <= fired, f"no test fires {sorted(alerts - fired)}"
    assert alerts <= quiet, f"no test shows {sorted(alerts - quiet)} staying quiet"
