"""Runs the registry process: settings from `STREAMML_*`, structured logs, uvicorn, then the DB closed.

uvicorn stops on SIGTERM/SIGINT after in-flight requests, then re-raises the signal to the handler
that was there before it: `Shutdown`'s, which only records it, so the store still gets closed.
"""

from __future__ import annotations

import sys

import uvicorn

from schemas.errors import ConfigError
from services.registry.app import create_app
from services.registry.settings import load_registry_settings
from services.registry.store import SchemaStore
from streams.runtime.lifecycle import Shutdown
from streams.runtime.logging import configure_logging


def main() -> None:
    """Serve until SIGTERM; a failure to start exits non-zero (SystemExit), whoever called us."""
    try:
        settings = load_registry_settings()
    except ConfigError as exc:
        print(f"streamml registry: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    log = configure_logging("registry", settings.log_level, settings.log_format)
    Shutdown()  # without it the re-raised SIGTERM would kill the process before the store is closed
    store = SchemaStore(settings.registry_db)
    app = create_app(store, admin_keys=settings.admin_keys)
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.registry_host, port=settings.registry_port,
        log_config=None, access_log=False, lifespan="off",
    ))
    log.info("registry starting", url=f"http://{settings.registry_host}:{settings.registry_port}",
             db=str(settings.registry_db), writes="admin key required" if settings.admin_keys else "open")
    try:
        server.run()
    finally:
        store.close()
        log.info("registry stopped")
    if not server.started:
        raise SystemExit(1)
