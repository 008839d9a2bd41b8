"""`streamml export-training`: a point-in-time-correct training set from labels and the event log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from schemas.errors import ConfigError
from streams.settings import FeatureFlowSettings, load_settings
from streams.training.export import ExportRequest, export_training

err = Console(stderr=True)


def export(
    labels: Annotated[str, typer.Option("--labels", help="'topic' (the labels topic) or a Parquet file/directory.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (train/validation/test.parquet + manifest.json).")],
    predictions: Annotated[str, typer.Option("--predictions", help="'topic' or Parquet: the prediction log.")] = "topic",
    split: Annotated[str, typer.Option("--split", help="time (train < validation < test by event time) or none.")] = "time",
    fractions: Annotated[str, typer.Option("--fractions", help="train,validation,test shares.")] = "0.7,0.15,0.15",
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """For every label, the features as of the labelled event's time (never later), split by time."""
    try:
        shares = tuple(float(x) for x in fractions.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3:
        raise ConfigError(f"--fractions {fractions!r}: give three numbers such as 0.7,0.15,0.15")
    settings = load_settings(FeatureFlowSettings)
    with err.status("exporting") as status:
        manifest = export_training(settings, ExportRequest(labels, out, predictions, split, shares),  # type: ignore[arg-type]
                                   lambda phase: status.update(phase))
    if as_json:
        print(json.dumps(manifest, default=str))
        return
    counts = ", ".join(f"{k} {v['rows']:,}" for k, v in manifest["splits"].items())
    skew = manifest.get("training_serving_skew") or {}
    err.print(f"{manifest['rows']:,} rows ({counts}) in {out} [{manifest['seconds']}s]; "
              f"{len(manifest['features'])} features; skew mismatches: {sum((skew.get('mismatches') or {}).values())}")


def register(root: typer.Typer) -> None:
    root.command("export-training")(export)
