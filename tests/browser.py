"""Headless Chromium for page tests: the DOM after the page's JS ran, and a screenshot.

How it waits: ``--virtual-time-budget`` runs the page on a virtual clock that only advances while nothing
is pending (network fetches included, measured: a 1.5 s fetch is awaited), then dumps the DOM or takes
the screenshot. So a page that fetches and re-fetches on a timer gets ``budget_ms`` of its own time
(e.g. 15 s = the first render plus two 5 s refreshes), however slow the server answers in real time.
A hard wall-clock timeout (``timeout_s``) guards against a page that never goes idle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
REPO = Path(__file__).resolve().parents[1]


def artifacts_dir() -> Path:
    """Where page tests save screenshots: `$STREAMML_TEST_ARTIFACTS`, else `<repo>/.artifacts`."""
    return Path(os.environ.get("STREAMML_TEST_ARTIFACTS") or REPO / ".artifacts")


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    exe = find_chromium()
    if exe is None:
        raise BrowserError("no Chromium on PATH: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="streamml-chromium-") as profile:
        cmd = [
            exe,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--mute-audio",
            f"--user-data-dir={profile}",
            *args,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise BrowserError(f"chromium did not finish in {timeout_s} s: {' '.join(cmd)}") from e
    if proc.returncode != 0:
        raise BrowserError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def render(
    url: str,
    screenshot: Path | None,
    window: tuple[int, int] = (1400, 2200),
    budget_ms: int = 15000,
    timeout_s: float = 25.0,
) -> str:
    """The DOM of ``url`` after ``budget_ms`` of virtual time; also a PNG at ``screenshot`` if given.

    Two browser runs (Chromium does one action per run): ``--dump-dom`` then ``--screenshot``; each
    run loads the page afresh, so both see the same virtual time budget.
    """
    common = [f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}"]
    dom = _run([*common, "--dump-dom", url], timeout_s).stdout
    if not dom.strip():
        raise BrowserError(f"chromium dumped an empty DOM for {url}")
    if screenshot is not None:
        screenshot = Path(screenshot)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.unlink(missing_ok=True)
        _run([*common, f"--screenshot={screenshot}", url], timeout_s)
        if not screenshot.exists() or screenshot.stat().st_size == 0:
            raise BrowserError(f"chromium wrote no screenshot to {screenshot}")
    return dom
