"""Runs the inference service: settings from `STREAMML_*`, structured logs, uvicorn; SIGTERM drains and flushes."""

from __future__ import annotations

import sys

import uvicorn

from schemas.errors import ConfigError
from services.inference.app import create_app
from services.inference.settings import InferenceSettings
from streams.runtime.lifecycle import Shutdown
from streams.runtime.logging import configure_logging
from streams.settings import load_settings


def main() -> None:
    try:
        settings = load_settings(InferenceSettings)
    except ConfigError as exc:
        print(f"streamml inference: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    log = configure_logging("inference", settings.log_level, settings.log_format)
    Shutdown()  # uvicorn re-raises SIGTERM after draining; this records it instead of dying with it
    # Other Python threads (model reloads, librdkafka's and prometheus' callbacks) take the GIL now and then;
    # with the default 5 ms switch interval a request could wait that long. 0.5 ms bounds the wait.
    sys.setswitchinterval(settings.inference_gil_switch_ms / 1000.0)
    log.info("inference starting", url=f"http://{settings.inference_host}:{settings.inference_port}",
             settings=settings.redacted())
    server = uvicorn.Server(uvicorn.Config(
        create_app(settings), host=settings.inference_host, port=settings.inference_port, log_config=None,
        access_log=False, loop="auto", http="auto", timeout_graceful_shutdown=10, backlog=4096,
        proxy_headers=settings.inference_proxy_headers, server_header=False))
    server.run()
    if not server.started:
        raise SystemExit(1)
