"""Pure parser of PostgreSQL `pgoutput` logical replication messages (protocol version 1).

Turns the bytes of one replication message into a frozen dataclass so the CDC layer never sees wire formats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from struct import Struct
from typing import Final, TypeAlias

from schemas.errors import CdcError

PG_EPOCH_MS: Final = 946_684_800_000

_HINT: Final = "is the slot using pgoutput protocol version 1?"
_REPLICA_IDENTITIES: Final = frozenset("dnfi")
_LSN_TEXT: Final = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_NEWER_PROTOCOL: Final = {
    ord("S"): "stream start (protocol version 2, streaming)",
    ord("E"): "stream stop (protocol version 2, streaming)",
    ord("c"): "stream commit (protocol version 2, streaming)",
    ord("A"): "stream abort (protocol version 2, streaming)",
    ord("b"): "begin prepare (protocol version 3, two_phase)",
    ord("P"): "prepare (protocol version 3, two_phase)",
    ord("K"): "commit prepared (protocol version 3, two_phase)",
    ord("r"): "rollback prepared (protocol version 3, two_phase)",
    ord("p"): "stream prepare (protocol version 3, two_phase)",
}

_U8 = Struct("!B")
_U16 = Struct("!H")
_U32 = Struct("!I")
_I32 = Struct("!i")
_U64 = Struct("!Q")
_BEGIN = Struct("!QqI")
_COMMIT = Struct("!BQQq")
_RELATION_TAIL = Struct("!cH")
_COLUMN_TYPE = Struct("!Ii")
_TRUNCATE_HEAD = Struct("!IB")
_MESSAGE_HEAD = Struct("!BQ")
_OID_KIND = Struct("!Ic")
_TEXT, _BINARY, _NULL, _UNCHANGED = b"tbnu"


class CdcProtocolError(CdcError):
    """A logical replication message is malformed or uses an unsupported protocol feature."""


class _Unchanged:
    """Type of `UNCHANGED_TOAST`: a TOASTed value the server did not send because it did not change."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _Unchanged()


@dataclass(frozen=True, slots=True)
class Column:
    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def key(self) -> bool:
        """Whether the column is part of the replica identity key."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts_ms: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_ms: int


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    old: tuple[object, ...] | None
    old_kind: str | None
    new: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: tuple[object, ...]
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message: TypeAlias = (
    Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate | LogicalMessage
)


def parse_lsn(text: str) -> int:
    """Parse PostgreSQL's `XXXXXXXX/XXXXXXXX` LSN notation into a 64-bit integer."""
    match = _LSN_TEXT.fullmatch(text)
    if match is None:
        raise CdcProtocolError(f"invalid LSN {text!r}: expected two hex numbers like '16/B374D848'")
    return int(match[1], 16) << 32 | int(match[2], 16)


def format_lsn(lsn: int) -> str:
    """Format a 64-bit LSN the way PostgreSQL does, e.g. `16/B374D848`."""
    if not 0 <= lsn < 1 << 64:
        raise CdcProtocolError(f"LSN {lsn} is outside the unsigned 64-bit range")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class _Malformed(Exception):
    """Internal: where parsing stopped and why (no reason means the buffer ended too early)."""

    def __init__(self, offset: int, reason: str | None = None):
        self.offset = offset
        self.reason = reason


def _fixed(layout: Struct, buf: bytes, off: int) -> tuple:
    if off + layout.size > len(buf):
        raise _Malformed(off)
    return layout.unpack_from(buf, off)


def _string(buf: bytes, off: int) -> tuple[str, int]:
    end = buf.find(b"\0", off)
    if end < 0:
        raise _Malformed(off)
    try:
        return buf[off:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise _Malformed(off + exc.start, "has a string that is not valid UTF-8") from None


def _tuple(buf: bytes, off: int) -> tuple[tuple[object, ...], int]:
    size = len(buf)
    if off + 2 > size:
        raise _Malformed(off)
    (count,) = _U16.unpack_from(buf, off)
    off += 2
    values: list[object] = []
    append = values.append
    for _ in range(count):
        if off >= size:
            raise _Malformed(off)
        kind = buf[off]
        if kind == _TEXT or kind == _BINARY:
            if off + 5 > size:
                raise _Malformed(off + 1)
            (length,) = _I32.unpack_from(buf, off + 1)
            start = off + 5
            off = start + length
            if length < 0:
                raise _Malformed(start - 4, f"has a negative value length {length}")
            if off > size:
                raise _Malformed(start)
            if kind == _BINARY:
                append(buf[start:off])
                continue
            try:
                append(buf[start:off].decode())
            except UnicodeDecodeError as exc:
                raise _Malformed(start + exc.start, "has a text value that is not valid UTF-8") from None
        elif kind == _NULL:
            append(None)
            off += 1
        elif kind == _UNCHANGED:
            append(UNCHANGED_TOAST)
            off += 1
        else:
            raise _Malformed(off, f"has unknown tuple value kind {chr(kind)!r} (expected n, u, t or b)")
    return tuple(values), off


def _begin(buf: bytes, off: int) -> tuple[Message, int]:
    final_lsn, ts_us, xid = _fixed(_BEGIN, buf, off)
    return Begin(final_lsn, PG_EPOCH_MS + ts_us // 1000, xid), off + _BEGIN.size


def _commit(buf: bytes, off: int) -> tuple[Message, int]:
    flags, commit_lsn, end_lsn, ts_us = _fixed(_COMMIT, buf, off)
    return Commit(flags, commit_lsn, end_lsn, PG_EPOCH_MS + ts_us // 1000), off + _COMMIT.size


def _origin(buf: bytes, off: int) -> tuple[Message, int]:
    (lsn,) = _fixed(_U64, buf, off)
    name, off = _string(buf, off + 8)
    return Origin(lsn, name), off


def _relation(buf: bytes, off: int) -> tuple[Message, int]:
    (oid,) = _fixed(_U32, buf, off)
    namespace, off = _string(buf, off + 4)
    name, off = _string(buf, off)
    identity, count = _fixed(_RELATION_TAIL, buf, off)
    replica_identity = chr(identity[0])
    if replica_identity not in _REPLICA_IDENTITIES:
        raise _Malformed(off, f"has unknown replica identity {replica_identity!r} (expected d, n, f, i)")
    off += _RELATION_TAIL.size
    columns = []
    for _ in range(count):
        (flags,) = _fixed(_U8, buf, off)
        column_name, off = _string(buf, off + 1)
        type_oid, type_modifier = _fixed(_COLUMN_TYPE, buf, off)
        off += _COLUMN_TYPE.size
        columns.append(Column(flags, column_name, type_oid, type_modifier))
    return Relation(oid, namespace, name, replica_identity, tuple(columns)), off


def _type(buf: bytes, off: int) -> tuple[Message, int]:
    (oid,) = _fixed(_U32, buf, off)
    namespace, off = _string(buf, off + 4)
    name, off = _string(buf, off)
    return TypeInfo(oid, namespace, name), off


def _insert(buf: bytes, off: int) -> tuple[Message, int]:
    oid, marker = _fixed(_OID_KIND, buf, off)
    if marker != b"N":
        raise _Malformed(off + 4, f"has tuple marker {marker.decode('latin-1')!r} where 'N' belongs")
    new, off = _tuple(buf, off + 5)
    return Insert(oid, new), off


def _update(buf: bytes, off: int) -> tuple[Message, int]:
    oid, marker = _fixed(_OID_KIND, buf, off)
    off += 4
    old = old_kind = None
    if marker == b"K" or marker == b"O":
        old_kind = marker.decode()
        old, off = _tuple(buf, off + 1)
        if off >= len(buf):
            raise _Malformed(off)
        marker = buf[off : off + 1]
    if marker != b"N":
        expected = "'N'" if old_kind else "'K', 'O' or 'N'"
        raise _Malformed(off, f"has tuple marker {marker.decode('latin-1')!r} where {expected} belongs")
    new, off = _tuple(buf, off + 1)
    return Update(oid, old, old_kind, new), off


def _delete(buf: bytes, off: int) -> tuple[Message, int]:
    oid, marker = _fixed(_OID_KIND, buf, off)
    if marker != b"K" and marker != b"O":
        raise _Malformed(off + 4, f"has tuple marker {marker.decode('latin-1')!r} where 'K' or 'O' belongs")
    old, off = _tuple(buf, off + 5)
    return Delete(oid, old, marker.decode()), off


def _truncate(buf: bytes, off: int) -> tuple[Message, int]:
    count, options = _fixed(_TRUNCATE_HEAD, buf, off)
    off += _TRUNCATE_HEAD.size
    if off + 4 * count > len(buf):
        raise _Malformed(off)
    oids = Struct(f"!{count}I").unpack_from(buf, off)
    return Truncate(options, oids), off + 4 * count


def _message(buf: bytes, off: int) -> tuple[Message, int]:
    flags, lsn = _fixed(_MESSAGE_HEAD, buf, off)
    prefix, off = _string(buf, off + _MESSAGE_HEAD.size)
    (length,) = _fixed(_I32, buf, off)
    if length < 0:
        raise _Malformed(off, f"has a negative content length {length}")
    off += 4
    if off + length > len(buf):
        raise _Malformed(off)
    return LogicalMessage(bool(flags & 1), lsn, prefix, buf[off : off + length]), off + length


_PARSERS: Final = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
}


def parse(data: bytes | bytearray | memoryview) -> Message:
    """Parse one pgoutput (protocol version 1) message; raise `CdcProtocolError` if it is malformed."""
    buf = data if type(data) is bytes else bytes(data)
    if not buf:
        raise CdcProtocolError(f"empty pgoutput message; {_HINT}")
    parser = _PARSERS.get(buf[0])
    if parser is None:
        newer = _NEWER_PROTOCOL.get(buf[0])
        if newer is not None:
            raise CdcProtocolError(
                f"pgoutput message {chr(buf[0])!r} is a {newer} message, which this parser does not support; "
                "start replication with proto_version '1' and without streaming or two_phase"
            )
        raise CdcProtocolError(f"unknown pgoutput message type {chr(buf[0])!r} at byte 0; {_HINT}")
    try:
        message, end = parser(buf, 1)
    except _Malformed as exc:
        what = "truncated" if exc.reason is None else exc.reason
        raise CdcProtocolError(
            f"pgoutput message {chr(buf[0])!r} {what} at byte {exc.offset} of {len(buf)}; {_HINT}"
        ) from None
    if end != len(buf):
        raise CdcProtocolError(
            f"pgoutput message {chr(buf[0])!r} has {len(buf) - end} trailing bytes"
            f" after byte {end} of {len(buf)}; {_HINT}"
        )
    return message
