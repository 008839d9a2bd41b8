"""The `streamml` command: bring the embedded stack up and down, show status, produce, run a process."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import StreammlError
from schemas.topics import all_topic_names
from streams.settings import load_settings

app = typer.Typer(help="streamml: streaming ML features, serving and drift.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()

GRAFANA_DASHBOARDS = Path("deploy/grafana/dashboards")

# process name -> "module:function" run by `streamml run NAME` (the stack launches these).
PROCESSES = {
    "registry": "services.registry.main:main",
    "features": "streams.flows.run:main",
    "inference": "services.inference.main:main",
    "learner": "services.inference.learner:main",
    "drift": "streams.drift.app:main",
    "ops": "services.ops.main:main",
    "cdc": "streams.cdc.reader:main",
}


@app.command()
def up(
    demo: bool = typer.Option(False, "--demo", help="Also start the load generator (demo traffic)."),
    rate: float = typer.Option(200.0, help="Demo traffic in events/s."),
    cdc_dsn: str | None = typer.Option(
        None, "--cdc-dsn", help="Also run the CDC reader on this PostgreSQL (or set STREAMML_CDC_DSN)."),
    cdc_tables: str = typer.Option("public.users,public.items", "--cdc-tables",
                                   help="Tables the CDC reader captures (schema.table, comma-separated)."),
) -> None:
    """Start the embedded stack on 127.0.0.1 (broker, Redis, registry, pipeline); safe to run twice."""
    import os

    from services.stack.embedded import up as stack_up

    settings = load_settings()
    dsn = cdc_dsn or os.environ.get("STREAMML_CDC_DSN")
    cdc = {"STREAMML_CDC_DSN": dsn, "STREAMML_CDC_TABLES": os.environ.get("STREAMML_CDC_TABLES", cdc_tables)} \
        if dsn else None
    result = stack_up(settings, demo=demo, demo_rate=rate, cdc=cdc)
    table = Table(title=f"streamml is up (home {settings.home})")
    table.add_column("process")
    table.add_column("endpoint")
    table.add_column("state")
    for name, endpoint in result.endpoints.items():
        table.add_row(name, endpoint, "started" if name in result.started else "already running")
    console.print(table)
    console.print(f"{len(result.topics)} topics ready; logs in {settings.log_dir}; `streamml status` to watch.")


@app.command()
def down() -> None:
    """Stop exactly the processes `streamml up` started."""
    from services.stack.embedded import down as stack_down

    stopped = stack_down(load_settings())
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Processes (pid, port, alive, ready), records per topic, and from the ops service: consumer lag,
    feature freshness and the latest drift per model."""
    from services.stack.embedded import status as stack_status
    from services.stack.health import kafka_ok
    from streams.kafka.offsets import topic_totals

    settings = load_settings()
    rows = stack_status(settings)
    topics: dict[str, int] = {}
    if kafka_ok(settings.kafka_config()):
        topics = topic_totals(settings.kafka_config(), all_topic_names())
    ops_url = f"http://127.0.0.1:{settings.ops_port}"
    ops = _ops_summary(ops_url)
    if as_json:
        print(json.dumps({"home": str(settings.home), "processes": rows, "topics": topics, "ops": ops}))
        return
    table = Table(title="processes")
    for col in ("name", "pid", "port", "metrics", "alive", "ready", "log"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], str(row["pid"]), str(row["port"] or "-"), str(row["metrics_port"] or "-"),
                      _yes(row["alive"]), _yes(row["ready"]), row["log"])
    console.print(table)
    if topics:
        ttable = Table(title="topics (records, from end offsets)")
        ttable.add_column("topic")
        ttable.add_column("records", justify="right")
        for name, count in topics.items():
            ttable.add_row(name, f"{count:,}")
        console.print(ttable)
    else:
        console.print(f"broker at {settings.kafka_bootstrap_servers} is not reachable")
    if ops is None:
        console.print(f"ops service at {ops_url} is not reachable: no lag, freshness or drift (`streamml up` starts it)")
        return
    _print_ops(ops, ops_url)


def _ops_summary(url: str) -> dict | None:
    import httpx

    try:
        return httpx.get(f"{url}/api/summary", timeout=3.0).raise_for_status().json()
    except httpx.HTTPError:
        return None


def _print_ops(ops: dict, url: str) -> None:
    lag = Table(title="consumer lag")
    for col, justify in (("group", "left"), ("partitions", "right"), ("messages behind", "right"),
                         ("seconds behind", "right")):
        lag.add_column(col, justify=justify)
    for g in ops["groups"]:
        lag.add_row(g["group"], str(g["partitions"]), f"{g['messages']:,}", f"{g['seconds']:.1f}")
    if ops.get("lag_error"):
        lag.caption = f"[red]lag probe failed: {ops['lag_error']}[/]"
    console.print(lag)
    fresh = ops.get("freshness_ms") or {}
    shown = ", ".join(f"{k} {v:.0f} ms" for k, v in fresh.items() if v is not None)
    console.print(f"feature freshness (last minute): {shown or 'no writes yet'}")
    drift = Table(title="latest drift per model (PSI of the last closed window)")
    for col in ("model", "version", "features", "max PSI", "alerts"):
        drift.add_column(col)
    models: dict[tuple, list[dict]] = {}
    for row in ops["drift"]:
        models.setdefault((row["model"], row["version"]), []).append(row)
    for (model, version), rows in sorted(models.items()):
        worst = max(rows, key=lambda r: r["psi"])
        alerts = [r["feature"] for r in rows if r["alert"]]
        drift.add_row(model, version, str(len(rows)), f"{worst['psi']:.3f} ({worst['feature']})",
                      f"[red]{', '.join(alerts)}[/]" if alerts else "none")
    if not models:
        drift.caption = "no window closed yet"
    console.print(drift)
    console.print(f"dashboard: {url}/dashboard")


@app.command()
def dashboards(out: Annotated[Path, typer.Option(help="Directory for the JSON files.")] = GRAFANA_DASHBOARDS) -> None:
    """Write the Grafana dashboards generated from the ops views (what deploy/grafana provisions)."""
    from services.ops.grafana import write_all

    for path in write_all(out):
        console.print(f"wrote {path}")


@app.command()
def provision() -> None:
    """Create all contract topics (explicit partitions) and register all schemas on the configured cluster."""
    from services.stack.embedded import provision as do_provision

    topics = do_provision(load_settings())
    console.print(f"{len(topics)} topics ready, schemas registered")


@app.command()
def run(process: str = typer.Argument(..., help=f"One of: {', '.join(PROCESSES)}")) -> None:
    """Run one streamml process in the foreground (what `up` and docker-compose launch)."""
    target = PROCESSES.get(process)
    if target is None:
        raise StreammlError(f"unknown process {process!r}; choose one of: {', '.join(PROCESSES)}")
    module, func = target.split(":")
    getattr(importlib.import_module(module), func)()


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def _register_subcommands() -> None:
    from services.commands import cdc, drift, export, produce, replay

    produce.register(app)
    cdc.register(app)
    replay.register(app)
    export.register(app)
    drift.register(app)


def main() -> None:
    """Console entry point: user errors print one clear line and exit 2, no traceback."""
    _register_subcommands()
    try:
        app()
    except StreammlError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
