"""`streamml drift reference`: freeze the bins drift is measured against, per model version."""

from __future__ import annotations

import json
from typing import Annotated

import redis
import typer
from rich.console import Console
from rich.table import Table

from schemas.topics import PREDICTIONS
from services.commands.times import parse_time
from streams.drift.reference import ProfileStore, build_profiles
from streams.settings import load_settings
from streams.training.export import read_source

drift_app = typer.Typer(help="Drift: reference profiles (PSI windows are computed by `streamml run drift`).",
                        no_args_is_help=True)


@drift_app.command("reference")
def reference(
    source: Annotated[str, typer.Option("--source", help="'topic' (the prediction log) or a Parquet file/directory.")] = "topic",
    since: Annotated[str | None, typer.Option("--since", help="ISO 8601, epoch ms or an age such as 6h.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO 8601, epoch ms or an age such as 1h.")] = None,
    bins: Annotated[int, typer.Option("--bins", min=2, max=100, help="Quantile bins per numeric feature.")] = 10,
    model: Annotated[str | None, typer.Option("--model", help="Only this model (default: every model logged).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Compute quantile bins and expected shares of the score and every feature, per model version, and store them."""
    settings = load_settings()
    table, files = read_source(settings, source, PREDICTIONS)
    since_ms, until_ms = parse_time(since, "--since"), parse_time(until, "--until")
    profiles = build_profiles(table, model=model, bins=bins, since_ms=since_ms, until_ms=until_ms,
                              source=",".join(files))
    store = ProfileStore(redis.Redis.from_url(settings.redis_url))
    saved = [{"model": p.model, "model_version": p.model_version, "rows": p.rows, "features": len(p.bins),
              "key": store.save(p)} for p in profiles]
    if as_json:
        print(json.dumps({"profiles": saved}))
        return
    out = Table(title="reference profiles stored")
    for col in ("model", "model_version", "rows", "features", "key"):
        out.add_column(col)
    for row in saved:
        out.add_row(*(str(row[c]) for c in ("model", "model_version", "rows", "features", "key")))
    Console().print(out)


def register(app: typer.Typer) -> None:
    app.add_typer(drift_app, name="drift")
