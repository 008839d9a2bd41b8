"""Durable registry state in SQLite: global schema ids, subject versions and compatibility settings.

The compatibility check and the insert of a new version run in one write transaction, so two
concurrent registrations can never both pass against the same stale "latest".
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from schemas.compatibility import DEFAULT_LEVEL, check, normalize_level, parse
from schemas.errors import IncompatibleSchemaError, SchemaError
from services.registry import errors

Version = int | Literal["latest"]
LATEST: Literal["latest"] = "latest"
_GLOBAL = ""  # config row of the global level; an empty subject cannot reach the API

_DDL = """
CREATE TABLE IF NOT EXISTS schemas (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused
    canonical TEXT NOT NULL UNIQUE,               -- same schema under any subject = same id
    schema    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    subject   TEXT NOT NULL,
    version   INTEGER NOT NULL,
    schema_id INTEGER NOT NULL REFERENCES schemas(id),
    deleted   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, version)
);
CREATE INDEX IF NOT EXISTS versions_by_schema ON versions(schema_id);
CREATE TABLE IF NOT EXISTS config (
    subject       TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class SubjectVersion:
    """One version of a subject: which global schema id it points at, and its schema text."""

    subject: str
    version: int
    schema_id: int
    schema: str
    deleted: bool = False


def canonical_form(schema: Any) -> str:
    """The text two registrations are compared by: parsed, keys sorted, no whitespace."""
    return json.dumps(parse(schema), sort_keys=True, separators=(",", ":"))


class SchemaStore:
    """All reads and writes of the registry; safe to share between the server's threads."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged id survives a power cut
        self._db.executescript(_DDL)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def ping(self) -> None:
        """Raises when the database cannot be read (for /healthz)."""
        self._rows("SELECT 1")

    # --- schemas ------------------------------------------------------------------------------
    def register(self, subject: str, schema: Any) -> tuple[SubjectVersion, bool]:
        """Add `schema` as the next version of `subject`; returns (version, created).

        The same schema registered again returns the existing version (created=False). A schema that
        breaks the subject's compatibility level raises `IncompatibleSchemaError` naming the fields.
        """
        value = parse(schema)
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
        with self._write() as db:
            found = db.execute(
                "SELECT v.version, s.id, s.schema FROM versions v JOIN schemas s ON s.id = v.schema_id "
                "WHERE v.subject = ? AND v.deleted = 0 AND s.canonical = ? ORDER BY v.version LIMIT 1",
                (subject, canonical),
            ).fetchone()
            if found:
                return SubjectVersion(subject, found[0], found[1], found[2]), False
            live = [row[0] for row in db.execute(
                "SELECT s.schema FROM versions v JOIN schemas s ON s.id = v.schema_id "
                "WHERE v.subject = ? AND v.deleted = 0 ORDER BY v.version", (subject,))]
            problems = check(value, live, self._level(db, subject))
            if problems:
                raise IncompatibleSchemaError(subject, problems)
            db.execute(
                "INSERT INTO schemas (canonical, schema) VALUES (?, ?) ON CONFLICT (canonical) DO NOTHING",
                (canonical, json.dumps(value, separators=(",", ":"))),
            )
            schema_id, text = db.execute("SELECT id, schema FROM schemas WHERE canonical = ?", (canonical,)).fetchone()
            (latest,) = db.execute("SELECT MAX(version) FROM versions WHERE subject = ?", (subject,)).fetchone()
            version = (latest or 0) + 1
            db.execute("INSERT INTO versions (subject, version, schema_id) VALUES (?, ?, ?)", (subject, version, schema_id))
        return SubjectVersion(subject, version, schema_id, text), True

    def lookup(self, subject: str, schema: Any, include_deleted: bool = False) -> SubjectVersion:
        """The version of `subject` holding `schema` (compared in canonical form)."""
        canonical = canonical_form(schema)
        self._require_subject(subject, include_deleted)
        rows = self._rows(
            "SELECT v.version, s.id, s.schema, v.deleted FROM versions v JOIN schemas s ON s.id = v.schema_id "
            "WHERE v.subject = ? AND s.canonical = ? AND (? OR v.deleted = 0) ORDER BY v.deleted, v.version DESC",
            (subject, canonical, include_deleted),
        )
        if not rows:
            raise errors.schema_not_found(f"Schema not found under subject '{subject}'")
        version, schema_id, text, deleted = rows[0]
        return SubjectVersion(subject, version, schema_id, text, bool(deleted))

    def schema_by_id(self, schema_id: int) -> str:
        """Schema text of a global id; soft-deleted versions still serve it (old records need it)."""
        if not -(2**63) <= schema_id < 2**63:  # beyond SQLite's INTEGER: no such id, and sqlite3 would raise
            raise errors.schema_not_found(f"Schema {schema_id} not found")
        rows = self._rows(
            "SELECT schema FROM schemas s WHERE id = ? AND EXISTS (SELECT 1 FROM versions WHERE schema_id = s.id)",
            (schema_id,),
        )
        if not rows:
            raise errors.schema_not_found(f"Schema {schema_id} not found")
        return rows[0][0]

    def versions_of_id(self, schema_id: int, include_deleted: bool = False) -> list[tuple[str, int]]:
        """Every (subject, version) pointing at a global id."""
        self.schema_by_id(schema_id)
        rows = self._rows(
            "SELECT subject, version FROM versions WHERE schema_id = ? AND (? OR deleted = 0) ORDER BY subject, version",
            (schema_id, include_deleted),
        )
        return [(subject, version) for subject, version in rows]

    # --- subjects and versions -----------------------------------------------------------------
    def subjects(self, include_deleted: bool = False, deleted_only: bool = False, prefix: str = "") -> list[str]:
        """Subject names; a subject whose versions are all soft-deleted counts as deleted."""
        rows = self._rows(
            "SELECT subject, MIN(deleted) FROM versions WHERE substr(subject, 1, ?) = ? GROUP BY subject ORDER BY subject",
            (len(prefix), prefix),
        )
        if deleted_only:
            return [s for s, all_deleted in rows if all_deleted]
        return [s for s, all_deleted in rows if include_deleted or not all_deleted]

    def versions(self, subject: str, include_deleted: bool = False, deleted_only: bool = False) -> list[int]:
        rows = self._rows("SELECT version, deleted FROM versions WHERE subject = ? ORDER BY version", (subject,))
        if deleted_only:
            found = [v for v, deleted in rows if deleted]
        else:
            found = [v for v, deleted in rows if include_deleted or not deleted]
        if not found:
            raise errors.subject_not_found(subject)
        return found

    def get_version(self, subject: str, version: Version, include_deleted: bool = False) -> SubjectVersion:
        """One version of a subject, or its latest live one for `"latest"`."""
        self._require_subject(subject, include_deleted)
        rows = self._rows(
            "SELECT v.version, s.id, s.schema, v.deleted FROM versions v JOIN schemas s ON s.id = v.schema_id "
            "WHERE v.subject = ? AND (? OR v.deleted = 0) AND (? OR v.version = ?) ORDER BY v.version DESC LIMIT 1",
            (subject, include_deleted, version == LATEST, 0 if version == LATEST else version),
        )
        if not rows:
            raise errors.version_not_found(subject, version)
        number, schema_id, text, deleted = rows[0]
        return SubjectVersion(subject, number, schema_id, text, bool(deleted))

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        """Soft-delete every live version, or (permanent) erase a soft-deleted subject; returns the versions."""
        with self._write() as db:
            rows = db.execute("SELECT version, deleted FROM versions WHERE subject = ? ORDER BY version", (subject,)).fetchall()
            if not rows:
                raise errors.subject_not_found(subject)
            live = [v for v, deleted in rows if not deleted]
            if not permanent:
                if not live:
                    raise errors.subject_soft_deleted(subject)
                db.execute("UPDATE versions SET deleted = 1 WHERE subject = ?", (subject,))
                return live
            if live:
                raise errors.subject_not_soft_deleted(subject)
            db.execute("DELETE FROM versions WHERE subject = ?", (subject,))
            db.execute("DELETE FROM config WHERE subject = ?", (subject,))
            return [v for v, _ in rows]

    def delete_version(self, subject: str, version: Version, permanent: bool = False) -> int:
        """Soft-delete one version, or (permanent) erase a soft-deleted one; returns its number."""
        with self._write() as db:
            rows = dict(db.execute("SELECT version, deleted FROM versions WHERE subject = ?", (subject,)).fetchall())
            if not rows:
                raise errors.subject_not_found(subject)
            if version == LATEST:
                live = [v for v, deleted in rows.items() if not deleted]
                version = max(live if live and not permanent else rows)
            if version not in rows:
                raise errors.version_not_found(subject, version)
            if not permanent:
                if rows[version]:
                    raise errors.version_soft_deleted(subject, version)
                db.execute("UPDATE versions SET deleted = 1 WHERE subject = ? AND version = ?", (subject, version))
            else:
                if not rows[version]:
                    raise errors.version_not_soft_deleted(subject, version)
                db.execute("DELETE FROM versions WHERE subject = ? AND version = ?", (subject, version))
            return version

    def check_compatibility(self, subject: str, schema: Any, version: Version | None = None) -> list[str]:
        """Problems `schema` would have as the next version: against one version, or (None) per the level."""
        if version is None:
            try:
                olds = [self.get_version(subject, v).schema for v in self.versions(subject)]
            except errors.RegistryRequestError:
                olds = []  # no subject yet: anything may be its first version
        else:
            olds = [self.get_version(subject, version).schema]
        return check(schema, olds, self.compatibility(subject))

    # --- compatibility settings ----------------------------------------------------------------
    def compatibility(self, subject: str | None = None) -> str:
        """The level in force: the subject's own, else the global one, else BACKWARD."""
        with self._lock:
            return self._level(self._db, subject)

    def subject_compatibility(self, subject: str) -> str | None:
        """The subject's own level, None when it follows the global one."""
        rows = self._rows("SELECT compatibility FROM config WHERE subject = ?", (subject,))
        return rows[0][0] if rows else None

    def set_compatibility(self, level: str, subject: str | None = None) -> str:
        try:
            level = normalize_level(level)
        except SchemaError as exc:
            raise errors.invalid_compatibility_level(str(exc)) from exc
        with self._write() as db:
            db.execute(
                "INSERT INTO config (subject, compatibility) VALUES (?, ?) "
                "ON CONFLICT (subject) DO UPDATE SET compatibility = excluded.compatibility",
                (subject or _GLOBAL, level),
            )
        return level

    def delete_compatibility(self, subject: str | None = None) -> str:
        """Drop a subject's own level (or reset the global one); returns the level that was in force."""
        with self._write() as db:
            before = self._level(db, subject)
            db.execute("DELETE FROM config WHERE subject = ?", (subject or _GLOBAL,))
        return before

    # --- plumbing ------------------------------------------------------------------------------
    @staticmethod
    def _level(db: sqlite3.Connection, subject: str | None) -> str:
        keys = ([subject] if subject else []) + [_GLOBAL]
        for key in keys:
            row = db.execute("SELECT compatibility FROM config WHERE subject = ?", (key,)).fetchone()
            if row:
                return row[0]
        return DEFAULT_LEVEL

    def _require_subject(self, subject: str, include_deleted: bool) -> None:
        if not self._rows(
            "SELECT 1 FROM versions WHERE subject = ? AND (? OR deleted = 0) LIMIT 1", (subject, include_deleted)
        ):
            raise errors.subject_not_found(subject)

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock before the first read."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
