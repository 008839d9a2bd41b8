"""`streamml replay …`: rebuild features into a namespace, list, promote and drop namespaces."""

from __future__ import annotations

import json
from typing import Annotated

import redis
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from services.commands.times import parse_time
from streams.features import namespaces
from streams.replay.rebuild import ReplayRequest, replay
from streams.runtime.lifecycle import tune_gc
from streams.settings import FeatureFlowSettings, load_settings

app = typer.Typer(help="Rebuild features from the event log or topics; blue/green namespaces.",
                  invoke_without_command=True, no_args_is_help=False)
err = Console(stderr=True)


class RichProgress:
    """One rich progress bar per phase, with rate and ETA (ETA only when the total is known)."""

    def __init__(self, progress: Progress):
        self._progress = progress
        self._task: TaskID | None = None

    def phase(self, name: str, total: int | None, unit: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[self._task].completed,
                                  total=self._progress.tasks[self._task].completed)
        self._task = self._progress.add_task(name, total=total, unit=unit)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)


class RateColumn(ProgressColumn):
    """Items per second of the task, in its unit."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {task.fields.get('unit', '')}/s" if speed else "", style="cyan")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err)


@app.callback()
def rebuild(
    ctx: typer.Context,
    source: Annotated[str, typer.Option("--source", help="parquet (the event log) or topic.")] = "parquet",
    since: Annotated[str | None, typer.Option("--since", help="Event time from (ISO, epoch ms or age like 6h).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Event time up to (ISO, epoch ms or age).")] = None,
    target: Annotated[str, typer.Option("--target", help="redis (a namespace) or parquet (a feature log).")] = "redis",
    namespace: Annotated[str | None, typer.Option("--namespace", help="Namespace to build (default: replay-<time>).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read and compute, write nothing.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rebuild an existing (not active) namespace.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Rebuild online features (or the feature log) with the live flow's definitions, into a namespace
    that serves nothing until `streamml replay promote NAME`."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings(FeatureFlowSettings)
    request = ReplayRequest(source, target, namespace or "", parse_time(since, "--since"), parse_time(until, "--until"),
                            dry_run, overwrite)
    tune_gc(settings.features_gc_thresholds)  # the rebuilt state is millions of small containers, as in the flow
    with _progress() as bar:
        report = replay(settings, request, RichProgress(bar))
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    verb = "would write" if dry_run else "wrote"
    err.print(f"{report.events:,} events ({report.late_skipped:,} late skipped) from {report.files} files -> "
              f"{verb} {sum(report.entities.values()):,} entities to {report.output} in {report.seconds:.1f}s "
              f"({report.events_per_s:,.0f} events/s)")
    if target == "redis" and not dry_run:
        err.print(f"serving still reads {namespaces.active(_client(settings))!r}; switch with "
                  f"[bold]streamml replay promote {report.namespace}[/]")


def _client(settings: FeatureFlowSettings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=10)


@app.command()
def promote(name: Annotated[str, typer.Argument(help="A completed namespace, or 'default'.")]) -> None:
    """Switch serving (and the live flow's writes) to NAME atomically."""
    client = _client(load_settings(FeatureFlowSettings))
    previous = namespaces.promote(client, name)
    err.print(f"serving now reads {name!r} (was {previous!r}); roll back with `streamml replay promote {previous}` "
              "only after rebuilding it, since it no longer receives live writes")


@app.command("list")
def list_namespaces(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every namespace, its status and which one is active."""
    rows = namespaces.all_namespaces(_client(load_settings(FeatureFlowSettings)))
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title="feature namespaces")
    for col in ("name", "active", "status", "events", "keys", "source"):
        table.add_column(col)
    for name, meta in rows.items():
        table.add_row(name, meta.get("active", ""), meta.get("status", ""), meta.get("events", "-"),
                      meta.get("keys", "-"), meta.get("source", "-"))
    Console().print(table)


@app.command()
def drop(name: Annotated[str, typer.Argument(help="A namespace that is not active.")]) -> None:
    """Delete a namespace's keys (refuses the active one)."""
    deleted = namespaces.drop(_client(load_settings(FeatureFlowSettings)), name)
    err.print(f"dropped {name!r}: {deleted:,} keys deleted")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="replay")
