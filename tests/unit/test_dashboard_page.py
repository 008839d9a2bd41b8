"""The built-in ops dashboard (services/ops/static) rendered by headless Chromium against fixture JSON.

A stdlib HTTP server stands in for the ops service with the same URL layout: /dashboard, /static/...,
/api/views?minutes=N and /api/summary.
"""

from __future__ import annotations

import json
import math
import mimetypes
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.browser import artifacts_dir, find_chromium, render

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "services" / "ops" / "static"
NO_CHROMIUM = "Chromium is needed for the dashboard tests: apt-get install -y chromium fonts-dejavu-core"




def fixture_views(now: float, n: int = 72, step: int = 5, extra_series: bool = False) -> dict:
    ts = [round(now - (n - 1 - i) * step, 1) for i in range(n)]

    def wave(base: float, amp: float, period: float, gaps: Collection[int] = ()) -> list[float | None]:
        return [None if i in gaps else round(base + amp * math.sin(i / period), 3) for i in range(n)]

    return {
        "generated_at": ts[-1] + 0.4,
        "interval_s": step,
        "timestamps": ts,
        "views": [
            {"name": "pipeline", "title": "Pipeline", "panels": [
                {"id": "pipeline.events_rate", "title": "Events in", "unit": "events/s", "series": [
                    {"label": "clickstream.events", "values": wave(1200, 300, 6, gaps={20, 21, 22})},
                    {"label": "labels.events", "values": wave(300, 80, 9)},
                    *([{"label": "orders.events", "values": wave(600, 100, 3)}] if extra_series else []),
                ]},
                {"id": "pipeline.consumer_lag", "title": "Consumer lag", "unit": "messages", "series": [
                    {"label": "features", "values": wave(40000, 25000, 10)},
                    {"label": "drift", "values": wave(800, 600, 4)},
                ]},
            ]},
            {"name": "serving", "title": "Serving", "panels": [
                {"id": "serving.latency", "title": "Request latency", "unit": "ms", "series": [
                    {"label": "p50", "values": wave(2.1, 0.4, 5)},
                    {"label": "p99", "values": wave(9.5, 3, 7)},
                ]},
                {"id": "serving.requests", "title": "Requests", "unit": "req/s", "series": [
                    # only a few isolated points so far: drawn as dots
                    {"label": "predict", "values": [None] * (n - 5) + [50.0, None, 52.0, None, 55.0]},
                ]},
            ]},
            {"name": "drift", "title": "Drift", "panels": [
                {"id": "drift.psi", "title": "PSI by feature", "unit": "psi", "series": [
                    {"label": "amount", "values": [None] * n},
                    {"label": "country", "values": [None] * n},
                ]},
            ]},
            {"name": "model", "title": "Model", "panels": [
                {"id": "model.accuracy", "title": "Rolling accuracy", "unit": "ratio", "series": [
                    {"label": "champion", "values": wave(0.91, 0.02, 8)},
                ]},
                {"id": "model.updates", "title": "Learn rate", "unit": "updates/s", "series": []},
            ]},
        ],
    }


SUMMARY = {
    "targets": [
        {"name": "features", "url": "http://127.0.0.1:9101/metrics", "up": True},
        {"name": "serving", "url": "http://127.0.0.1:9102/metrics", "up": True},
        {"name": "drift", "url": "http://127.0.0.1:9103/metrics", "up": False},
    ],
    "ignored": {"anything": 1},
}


@dataclass
class FakeOps:
    """What the fake ops service answers, and what it was asked."""

    views: Callable[[int], dict]  # the n-th /api/views call (0-based) -> payload
    summary: dict | None = field(default_factory=lambda: SUMMARY)
    api_status: int = 200
    requests: list[str] = field(default_factory=list)
    views_calls: int = 0
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def make_handler(ops: FakeOps) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            ops.requests.append(self.path)
            url = urlsplit(self.path)
            if url.path == "/dashboard":
                return self.file(STATIC / "dashboard.html")
            if url.path.startswith("/static/"):
                target = (STATIC / url.path.removeprefix("/static/")).resolve()
                if STATIC.resolve() not in target.parents or not target.is_file():
                    return self.reply(404, b"not found", "text/plain")
                return self.file(target)
            if url.path == "/api/views":
                ops.views_calls += 1
                return self.api(ops.views(ops.views_calls - 1))
            if url.path == "/api/summary":
                return self.api(ops.summary)
            return self.reply(404, b"not found", "text/plain")

        def api(self, payload: dict | None) -> None:
            if ops.api_status != 200:
                return self.reply(ops.api_status, b'{"detail": "boom"}', "application/json")
            return self.reply(200, json.dumps(payload).encode(), "application/json")

        def file(self, path: Path) -> None:
            ctype = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}.get(
                path.suffix, mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            )
            self.reply(200, path.read_bytes(), ctype)

        def reply(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def serve() -> Iterator:
    servers: list[ThreadingHTTPServer] = []

    def start(ops: FakeOps) -> FakeOps:
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(ops))
        server.daemon_threads = True
        ops.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return ops

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def require_chromium() -> None:
    """A missing browser fails the test (CI installs it): a skip would hide that the page is untested."""
    if find_chromium() is None:
        pytest.fail(NO_CHROMIUM, pytrace=False)


class Dom(HTMLParser):
    """Panels (data-* attributes, canvases, text) and the body's attributes from a dumped DOM."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, html: str):
        super().__init__()
        self.body: dict[str, str] = {}
        self.panels: dict[str, dict] = {}
        self.banner: dict[str, str | None] = {}
        self.targets: list[dict[str, str]] = []
        self.active_range: list[str] = []
        self._stack: list[tuple[str, str | None]] = []  # (tag, panel id it opens)
        self.feed(html)

    def _panel(self) -> dict | None:
        for _, pid in reversed(self._stack):
            if pid is not None:
                return self.panels[pid]
        return None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        if a.get("id") == "banner":
            self.banner = a
        if "data-target" in a:
            self.targets.append(a)
        if tag == "button" and "active" in a.get("class", "").split():
            self.active_range.append(a.get("data-minutes", ""))
        pid = a.get("data-panel")
        if pid is not None:
            self.panels[pid] = {**a, "canvases": 0, "text": ""}
        elif tag == "canvas" and (p := self._panel()) is not None:
            p["canvases"] += 1
        if tag not in self.VOID:
            self._stack.append((tag, pid))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if (p := self._panel()) is not None:
            p["text"] += data


def test_dashboard_renders_fixture_views(serve) -> None:
    require_chromium()
    now = time.time()
    # from the 2nd call on, one panel gains a series: that chart (only) is rebuilt, the others get setData
    ops = serve(FakeOps(views=lambda call: fixture_views(now + 5 * call, extra_series=call > 0)))
    shot = artifacts_dir() / "dashboard-fixture.png"
    started = time.monotonic()
    dom = Dom(render(f"{ops.base}/dashboard", shot))
    elapsed = time.monotonic() - started

    assert "data-error" not in dom.body, dom.body.get("data-error")
    assert "hidden" in dom.banner
    # 15 s of virtual time with a 5 s refresh: the first render plus refreshes
    assert int(dom.body.get("data-renders", "0")) >= 2, "the page did not render /api/views, or never refreshed"
    assert any(p.startswith("/api/views?minutes=15") for p in ops.requests), ops.requests

    final = fixture_views(now, extra_series=True)  # what the last refresh showed
    expected = {p["id"]: p for v in final["views"] for p in v["panels"]}
    assert list(dom.panels) == list(expected), "panels not rendered in the server's order"
    for pid, panel in expected.items():
        got = dom.panels[pid]
        points = sum(v is not None for s in panel["series"] for v in s["values"])
        assert int(got["data-series"]) == len(panel["series"]), pid
        assert int(got["data-points"]) == points, pid
        if points:
            assert got["canvases"] >= 1, f"{pid} has data but no chart"
            assert "no data yet" not in got["text"], pid
        else:
            assert got["canvases"] == 0, f"{pid} has no data but a chart"
            assert "no data yet" in got["text"], pid
        assert panel["title"] in got["text"] and panel["unit"] in got["text"], pid
    # legend labels from the series
    assert "clickstream.events" in dom.panels["pipeline.events_rate"]["text"]
    assert "orders.events" in dom.panels["pipeline.events_rate"]["text"]
    with_data = sum(int(p["data-points"]) > 0 for p in dom.panels.values())
    assert int(dom.body["data-chart-builds"]) == with_data + 1, "charts rebuilt although their series set did not change"

    assert {t["data-target"]: t["data-up"] for t in dom.targets} == {"features": "1", "serving": "1", "drift": "0"}
    assert dom.active_range == ["15"]
    assert shot.stat().st_size > 10_000
    assert elapsed < 30, f"two browser runs took {elapsed:.1f} s"


def test_dashboard_shows_fetch_errors_and_keeps_retrying(serve) -> None:
    require_chromium()
    ops = serve(FakeOps(views=lambda call: fixture_views(time.time()), api_status=500))
    dom = Dom(render(f"{ops.base}/dashboard?minutes=60", screenshot=None, budget_ms=12000))

    assert "HTTP 500" in dom.body.get("data-error", ""), dom.body
    assert "hidden" not in dom.banner, "the error banner is not shown"
    assert "data-renders" not in dom.body
    view_calls = [p for p in ops.requests if p.startswith("/api/views")]
    assert len(view_calls) >= 2, f"no retry after the failure: {ops.requests}"
    assert all("minutes=60" in p for p in view_calls), view_calls
    assert dom.active_range == ["60"]


# URLs that appear in the static files but are never loaded (license banners).
NOT_LOADED = {("vendor/uPlot.iife.min.js", "https://github.com/leeoniya/uPlot")}


def test_static_files_reference_nothing_off_origin() -> None:
    files = [p for p in STATIC.rglob("*") if p.suffix in {".html", ".js", ".css"}]
    assert {p.name for p in files} >= {"dashboard.html", "dashboard.js", "dashboard.css", "uPlot.iife.min.js", "uPlot.min.css"}
    found = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(STATIC).as_posix()
        for url in re.findall(r"""https?://[^\s"'`)<>]+""", text, flags=re.IGNORECASE):
            if (rel, url) not in NOT_LOADED:
                found.append((rel, url))
        # protocol-relative loads: src="//cdn...", url(//cdn...), @import "//cdn..."
        found += [(rel, m) for m in re.findall(r"""(?:src=|href=|url\(|@import\s*)["']?//[^\s"')]+""", text)]
    assert not found, f"off-origin URLs in services/ops/static (everything must be bundled): {found}"
    html = (STATIC / "dashboard.html").read_text(encoding="utf-8")
    for ref in re.findall(r"""(?:src|href)="([^"]+)\"""", html):
        if ref.startswith("data:"):
            continue
        assert ref.startswith("/static/"), f"dashboard.html loads {ref}; the ops service serves /static/ only"
        assert (STATIC / ref.removeprefix("/static/")).is_file(), ref
