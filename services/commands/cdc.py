"""`streamml cdc`: capture PostgreSQL changes as Debezium-style Avro envelopes on `cdc.<db>.<table>`."""

from __future__ import annotations

from typing import Annotated

import typer


def cdc(
    dsn: Annotated[str | None, typer.Option(
        "--dsn", help="Source database, postgresql://user:pw@host:5432/db (or STREAMML_CDC_DSN, which keeps the "
                      "password out of the process list).")] = None,
    tables: Annotated[str | None, typer.Option(
        "--tables", help="schema.table list, comma-separated (STREAMML_CDC_TABLES).")] = None,
    slot: Annotated[str | None, typer.Option("--slot", help="Replication slot (default streamml_cdc).")] = None,
    publication: Annotated[str | None, typer.Option(
        "--publication", help="Publication (default streamml_cdc; created or extended when needed).")] = None,
    db_name: Annotated[str | None, typer.Option(
        "--db-name", help="Database name in topic names and source.db (default: the DSN's database).")] = None,
    snapshot: Annotated[str | None, typer.Option(
        "--snapshot", help="initial (existing rows as op r, then changes) or never.")] = None,
) -> None:
    """Read PostgreSQL logical replication (pgoutput) and publish each change at least once, in commit order.

    The slot is confirmed only up to what Kafka acknowledged, so a restart resumes with no change lost.
    """
    from streams.cdc.reader import main

    given = {"cdc_dsn": dsn, "cdc_tables": tables, "cdc_slot": slot, "cdc_publication": publication,
             "cdc_db_name": db_name, "cdc_snapshot": snapshot}
    main(**{k: v for k, v in given.items() if v is not None})


def register(app: typer.Typer) -> None:
    app.command("cdc")(cdc)
