"""Runs the ops service: settings from `STREAMML_OPS_*`, structured logs, uvicorn; exits cleanly on SIGTERM."""

from __future__ import annotations

import sys

import uvicorn

from schemas.errors import ConfigError
from services.ops.app import create_app
from services.ops.settings import OpsSettings
from streams.runtime.lifecycle import Shutdown
from streams.runtime.logging import configure_logging
from streams.settings import load_settings


def main() -> None:
    try:
        settings = load_settings(OpsSettings)
    except ConfigError as exc:
        print(f"streamml ops: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    log = configure_logging("ops", settings.log_level, settings.log_format)
    Shutdown()  # uvicorn re-raises SIGTERM after its graceful shutdown; this records it instead: exit 0
    log.info("ops starting", url=f"http://{settings.ops_host}:{settings.ops_port}/dashboard",
             settings=settings.redacted())
    server = uvicorn.Server(uvicorn.Config(
        create_app(settings), host=settings.ops_host, port=settings.ops_port, log_config=None,
        access_log=False, timeout_graceful_shutdown=5, server_header=False))
    server.run()
    if not server.started:
        raise SystemExit(1)
    log.info("ops stopped")
