"""`streamml produce`: publish generated shop traffic (clickstream, CDC, labels) at a steady rate.

Runs until --duration, --max-events or Ctrl-C/SIGTERM, then prints what was sent per topic.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import StreammlError
from schemas.registry import RegistryClient
from services.loadgen.config import LoadConfig
from services.loadgen.run import run_load
from streams.runtime.lifecycle import Shutdown
from streams.runtime.logging import configure_logging
from streams.settings import load_settings


def produce(
    rate: Annotated[float, typer.Option("--rate", help="Total events/s across topics (0 = as fast as possible).")] = 200.0,
    duration: Annotated[float, typer.Option("--duration", help="Seconds to run (0 = until Ctrl-C/SIGTERM).")] = 0.0,
    users: Annotated[int, typer.Option("--users", min=1, help="Simulated users (CDC snapshot first).")] = 1000,
    items: Annotated[int, typer.Option("--items", min=1, help="Simulated catalogue items.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same events (ids carry it).")] = 42,
    late_fraction: Annotated[float, typer.Option("--late-fraction", min=0.0, max=1.0,
                                                 help="Share of clickstream events that arrive late.")] = 0.0,
    max_events: Annotated[int | None, typer.Option("--max-events", min=1, help="Stop after this many events.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    predict_url: Annotated[str | None, typer.Option(
        "--predict-url", help="Ask this inference service for the shop's predictions; labels then refer to "
                              "served ids (the demo's closed loop).")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=0, help="Serve streamml_loadgen_* on this /metrics port while running (0 = any free "
                                      "port; default: STREAMML_LOADGEN_METRICS_PORT, else none).")] = None,
) -> None:
    """Publish generated shop traffic to the configured cluster (topics are created if missing)."""
    settings = load_settings()
    configure_logging("loadgen", settings.log_level, settings.log_format)  # to stderr: stdout is the summary
    config = LoadConfig(users=users, items=items, seed=seed, late_fraction=late_fraction)
    registry = RegistryClient(settings.schema_registry_url)
    err = Console(stderr=True)
    on_progress = None if as_json else (lambda p: err.print(
        f"[dim]{p['elapsed_s']:>7.1f}s  {p['events']:>10,} events  {p['rate']:>9,.1f}/s  "
        f"delivered {p['delivered']:,}  failed {p['failed']:,}[/]"))
    served = None
    if predict_url:
        from services.loadgen.served import ServedPredictions

        keys = [k for k in os.environ.get("STREAMML_INFERENCE_API_KEYS", "").split(",") if k.strip()]
        served = ServedPredictions(predict_url, keys[0].strip() if keys else None)
    summary = run_load(settings, config, rate, duration or None, registry, on_progress=on_progress,
                       shutdown=Shutdown(), max_events=max_events, served=served,
                       metrics_port=settings.loadgen_metrics_port if metrics_port is None else metrics_port)
    if as_json:
        print(json.dumps(summary))
    else:
        Console().print(summary_table(summary))
    failed = sum(t.get("failed", 0) for t in summary["topics"].values())
    if failed or summary["undelivered"]:
        raise StreammlError(f"{failed} records failed and {summary['undelivered']} were not delivered; "
                            f"see the producer warnings above and check {settings.kafka_bootstrap_servers}")


def summary_table(summary: dict[str, Any]) -> Table:
    """The end-of-run summary: one row per topic, the achieved rate in the caption."""
    table = Table(title=f"produced ({summary['stopped']}, seed {summary['seed']})",
                  caption=f"{summary['events']:,} events in {summary['elapsed_s']:.1f}s = "
                          f"{summary['achieved_rate']:,.1f}/s (target {_target(summary['target_rate'])}); "
                          f"{summary['late']:,} late; idempotent={summary['idempotent']}")
    for column in ("topic", "partitions", "sent", "delivered", "failed", "bytes"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for name, row in summary["topics"].items():
        table.add_row(name, str(row.get("partitions", "?")), f"{row.get('queued', 0):,}",
                      f"{row.get('delivered', 0):,}", f"{row.get('failed', 0):,}", f"{row.get('bytes', 0):,}")
    return table


def _target(rate: float) -> str:
    return f"{rate:,.1f}/s" if rate > 0 else "unlimited"


def register(app: typer.Typer) -> None:
    """Add `produce` to the `streamml` app."""
    app.command("produce")(produce)
