"""What the reader asks PostgreSQL's catalog: tables and columns, the publication, the slot.

One autocommit connection (no long transaction that would hold back vacuum). Column order follows
`attnum`, the order pgoutput's Relation messages use.
"""

from __future__ import annotations

from typing import Any

from schemas.errors import CdcError
from streams.cdc.columns import ColumnSpec, TableSpec

_COLUMNS = """
SELECT a.attname, a.atttypid, t.typtype = 'e' AS is_enum, t.typname,
       coalesce(a.attnum = ANY(i.indkey), false) AS is_key
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum
"""
_ENUM_LABELS = "SELECT enumtypid, enumlabel FROM pg_enum WHERE enumtypid = ANY(%s) ORDER BY enumtypid, enumsortorder"


def split_table(name: str) -> tuple[str, str]:
    """`public.users` -> ("public", "users"); a bare `users` means schema public."""
    schema, _, table = name.rpartition(".")
    return (schema or "public"), table


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Catalog:
    """Catalog queries over one psycopg2 connection (autocommit)."""

    def __init__(self, conn: Any):
        self.conn = conn

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def database(self) -> str:
        return self._rows("SELECT current_database()")[0][0]

    def check_server(self) -> None:
        """Logical replication must be on; say how to turn it on otherwise."""
        level = self._rows("SHOW wal_level")[0][0]
        if level != "logical":
            raise CdcError(f"PostgreSQL has wal_level={level}; CDC needs wal_level=logical "
                           "(ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL)")

    def table(self, name: str, db: str) -> TableSpec:
        """The table's current columns, primary key and enum labels; `CdcError` if it does not exist."""
        schema, table = split_table(name)
        qualified = f"{quote_ident(schema)}.{quote_ident(table)}"
        exists = self._rows("SELECT to_regclass(%s)", (qualified,))[0][0]
        if exists is None:
            raise CdcError(f"table {schema}.{table} does not exist in database {self.database()!r}; "
                           "check --tables (schema.table, comma-separated)")
        rows = self._rows(_COLUMNS, (qualified,))
        return TableSpec(schema, table, db, tuple(self.columns(rows)))

    def columns(self, rows: list[tuple]) -> list[ColumnSpec]:
        """ColumnSpecs from (name, type oid, is_enum, type name, is_key) rows, with enum labels looked up."""
        enum_oids = sorted({oid for _, oid, is_enum, _, _ in rows if is_enum})
        labels: dict[int, list[str]] = {oid: [] for oid in enum_oids}
        if enum_oids:
            for oid, label in self._rows(_ENUM_LABELS, (enum_oids,)):
                labels[oid].append(label)
        return [ColumnSpec(name, oid, bool(key), typname if is_enum else None,
                           tuple(labels.get(oid, ())) if is_enum else ())
                for name, oid, is_enum, typname, key in rows]

    def describe(self, namespace: str, name: str, columns: list[tuple[str, int]]) -> list[ColumnSpec]:
        """ColumnSpecs for the columns of a Relation message (name, type oid), keys and enums from the catalog."""
        qualified = f"{quote_ident(namespace)}.{quote_ident(name)}"
        current = {row[0]: row for row in self._rows(_COLUMNS, (qualified,))}
        type_rows = {oid: row for oid, row in (
            (oid, self._rows("SELECT typtype = 'e', typname FROM pg_type WHERE oid = %s", (oid,)))
            for oid in {oid for _, oid in columns})}
        rows = []
        for col, oid in columns:
            is_enum, typname = type_rows[oid][0] if type_rows[oid] else (False, "")
            is_key = bool(current[col][4]) if col in current else False
            rows.append((col, oid, is_enum, typname, is_key))
        return self.columns(rows)

    def ensure_publication(self, publication: str, tables: list[TableSpec]) -> None:
        """Create the publication for `tables`, or add the ones it lacks (never removes any)."""
        wanted = {t.qualified for t in tables}
        found = self._rows("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
                           (publication,))
        exists = self._rows("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
        names = ", ".join(f"{quote_ident(t.schema)}.{quote_ident(t.table)}" for t in tables
                          if t.qualified not in {r[0] for r in found})
        if not exists:
            self._rows(f"CREATE PUBLICATION {quote_ident(publication)} FOR TABLE {names}")
        elif names:
            self._rows(f"ALTER PUBLICATION {quote_ident(publication)} ADD TABLE {names}")
        missing = wanted - {r[0] for r in self._rows(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s", (publication,))}
        if missing:
            raise CdcError(f"publication {publication!r} does not include {sorted(missing)}")

    def slot(self, slot: str) -> tuple[str, str, bool] | None:
        """(plugin, database, active) of an existing slot, or None."""
        rows = self._rows("SELECT plugin, database, active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return tuple(rows[0]) if rows else None  # type: ignore[return-value]

    def slot_lag_bytes(self, slot: str) -> int | None:
        """WAL the slot still holds back: current WAL position minus its confirmed flush position."""
        rows = self._rows("SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots "
                          "WHERE slot_name = %s", (slot,))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def confirmed_flush(self, slot: str) -> str | None:
        rows = self._rows("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return rows[0][0] if rows else None
