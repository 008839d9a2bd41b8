"""pgoutput protocol 1 parser: round trips via a test-side encoder, real PostgreSQL 15 bytes, errors."""

from __future__ import annotations

import copy
import pickle
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import StreammlError
from streams.cdc.pgoutput import (
    PG_EPOCH_MS,
    UNCHANGED_TOAST,
    Begin,
    CdcProtocolError,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    Truncate,
    TypeInfo,
    Update,
    format_lsn,
    parse,
    parse_lsn,
)

# Encoder written from the PostgreSQL docs "Logical Replication Message Formats", independent of the parser.


def _string(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def _tuple_data(values) -> bytes:
    out = bytearray(struct.pack(">h", len(values)))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED_TOAST:
            out += b"u"
        elif isinstance(value, str):
            raw = value.encode("utf-8")
            out += b"t" + struct.pack(">i", len(raw)) + raw
        else:
            out += b"b" + struct.pack(">i", len(value)) + value
    return bytes(out)


def enc_begin(final_lsn: int, ts_us: int, xid: int) -> bytes:
    return b"B" + final_lsn.to_bytes(8, "big") + struct.pack(">q", ts_us) + xid.to_bytes(4, "big")


def enc_commit(flags: int, commit_lsn: int, end_lsn: int, ts_us: int) -> bytes:
    lsns = commit_lsn.to_bytes(8, "big") + end_lsn.to_bytes(8, "big")
    return b"C" + bytes([flags]) + lsns + struct.pack(">q", ts_us)


def enc_origin(lsn: int, name: str) -> bytes:
    return b"O" + lsn.to_bytes(8, "big") + _string(name)


def enc_relation(oid: int, namespace: str, name: str, identity: str, columns) -> bytes:
    out = b"R" + oid.to_bytes(4, "big") + _string(namespace) + _string(name) + identity.encode()
    out += struct.pack(">h", len(columns))
    for flags, column_name, type_oid, typmod in columns:
        out += bytes([flags]) + _string(column_name) + type_oid.to_bytes(4, "big") + struct.pack(">i", typmod)
    return out


def enc_type(oid: int, namespace: str, name: str) -> bytes:
    return b"Y" + oid.to_bytes(4, "big") + _string(namespace) + _string(name)


def enc_insert(oid: int, new) -> bytes:
    return b"I" + oid.to_bytes(4, "big") + b"N" + _tuple_data(new)


def enc_update(oid: int, new, old=None, old_kind: str | None = None) -> bytes:
    out = b"U" + oid.to_bytes(4, "big")
    if old_kind is not None:
        out += old_kind.encode() + _tuple_data(old)
    return out + b"N" + _tuple_data(new)


def enc_delete(oid: int, old_kind: str, old) -> bytes:
    return b"D" + oid.to_bytes(4, "big") + old_kind.encode() + _tuple_data(old)


def enc_truncate(options: int, oids) -> bytes:
    head = b"T" + struct.pack(">i", len(oids)) + bytes([options])
    return head + b"".join(o.to_bytes(4, "big") for o in oids)


def enc_message(transactional: bool, lsn: int, prefix: str, content: bytes) -> bytes:
    head = b"M" + bytes([int(transactional)]) + lsn.to_bytes(8, "big") + _string(prefix)
    return head + struct.pack(">i", len(content)) + content


U32 = 2**32 - 1
U64 = 2**64 - 1
MIXED = (None, UNCHANGED_TOAST, "héllo wörld", b"\x00\xff\x00", "", b"")

CASES = {
    "begin": (enc_begin(0x16_B374D848, 0, 731), Begin(0x16_B374D848, PG_EPOCH_MS, 731)),
    "begin-max": (enc_begin(U64, 1_000_000, U32), Begin(U64, PG_EPOCH_MS + 1000, U32)),
    "commit": (enc_commit(0, 100, 148, 2_000), Commit(0, 100, 148, PG_EPOCH_MS + 2)),
    "origin": (enc_origin(0xAB_00000001, "node_α"), Origin(0xAB_00000001, "node_α")),
    "relation": (
        enc_relation(16384, "public", "orders", "d", [(1, "id", 23, -1), (0, "price", 1700, 655366)]),
        Relation(16384, "public", "orders", "d", (Column(1, "id", 23, -1), Column(0, "price", 1700, 655366))),
    ),
    "relation-full-no-columns": (enc_relation(U32, "", "e", "f", []), Relation(U32, "", "e", "f", ())),
    "type": (enc_type(16395, "public", "mood"), TypeInfo(16395, "public", "mood")),
    "insert": (enc_insert(16384, MIXED), Insert(16384, MIXED)),
    "insert-empty": (enc_insert(1, ()), Insert(1, ())),
    "update-new-only": (enc_update(7, ("1", UNCHANGED_TOAST)), Update(7, None, None, ("1", UNCHANGED_TOAST))),
    "update-key": (enc_update(7, ("2", "x"), ("1", None), "K"), Update(7, ("1", None), "K", ("2", "x"))),
    "update-old": (enc_update(7, MIXED, ("a", b"b"), "O"), Update(7, ("a", b"b"), "O", MIXED)),
    "delete-key": (enc_delete(9, "K", ("3", None, None)), Delete(9, ("3", None, None), "K")),
    "delete-old": (enc_delete(9, "O", MIXED), Delete(9, MIXED, "O")),
    "truncate": (enc_truncate(3, [16384, 16391, U32]), Truncate(3, (16384, 16391, U32))),
    "truncate-one": (enc_truncate(0, [5]), Truncate(0, (5,))),
    "message": (enc_message(True, 42, "audit", b"\x00hi"), LogicalMessage(True, 42, "audit", b"\x00hi")),
    "message-nontx-empty": (enc_message(False, 1, "p", b""), LogicalMessage(False, 1, "p", b"")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip(name):
    data, expected = CASES[name]
    assert parse(data) == expected


@pytest.mark.parametrize("wrap", [bytearray, memoryview, lambda b: memoryview(b"xx" + b + b"yy")[2:-2]])
def test_accepts_any_buffer(wrap):
    data, expected = CASES["update-old"]
    assert parse(wrap(data)) == expected


def test_values_have_the_documented_types():
    new = parse(enc_insert(1, MIXED)).new
    assert new[0] is None and new[1] is UNCHANGED_TOAST
    assert type(new[2]) is str and type(new[3]) is bytes and type(new[5]) is bytes


@pytest.mark.parametrize(
    ("ts_us", "ms"),
    [(0, PG_EPOCH_MS), (999, PG_EPOCH_MS), (1000, PG_EPOCH_MS + 1), (-1, PG_EPOCH_MS - 1),
     (-1000, PG_EPOCH_MS - 1), (-1001, PG_EPOCH_MS - 2), (-PG_EPOCH_MS * 1000, 0),
     (757_382_400_123_456, 1_704_067_200_123)],
)
def test_timestamps_floor_to_unix_ms(ts_us, ms):
    assert parse(enc_begin(1, ts_us, 1)).commit_ts_ms == ms
    assert parse(enc_commit(0, 1, 2, ts_us)).commit_ts_ms == ms


def test_column_key_flag():
    assert Column(1, "id", 23, -1).key is True
    assert Column(0, "v", 25, -1).key is False


def test_unchanged_toast_is_a_singleton():
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST
    assert copy.deepcopy(UNCHANGED_TOAST) is UNCHANGED_TOAST


@pytest.mark.parametrize(
    ("text", "lsn"),
    [("16/B374D848", 0x16_B374D848), ("0/0", 0), ("FFFFFFFF/FFFFFFFF", 2**64 - 1), ("0/1531808", 0x1531808),
     ("1/0", 1 << 32)],
)
def test_lsn_round_trip(text, lsn):
    assert parse_lsn(text) == lsn
    assert format_lsn(lsn) == text


def test_parse_lsn_accepts_lowercase():
    assert parse_lsn("16/b374d848") == 0x16_B374D848


BAD_LSNS = ["", "16", "/1", "1/", "x/1", "1/2/3", "100000000/0", "0/100000000", "-1/0", "+1/0", " 1/0"]


@pytest.mark.parametrize("text", [*BAD_LSNS, "1_0/0", "1/0\n", "\uff11/0"])
def test_parse_lsn_rejects_garbage(text):
    with pytest.raises(CdcProtocolError, match="invalid LSN"):
        parse_lsn(text)


@pytest.mark.parametrize("lsn", [-1, 2**64])
def test_format_lsn_rejects_out_of_range(lsn):
    with pytest.raises(CdcProtocolError):
        format_lsn(lsn)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_lsn_property_round_trip(lsn):
    assert parse_lsn(format_lsn(lsn)) == lsn


VALUES = st.one_of(st.none(), st.just(UNCHANGED_TOAST), st.text(), st.binary())


@given(st.integers(min_value=0, max_value=2**32 - 1), st.lists(VALUES, max_size=40).map(tuple))
def test_insert_property_round_trip(oid, values):
    assert parse(enc_insert(oid, values)) == Insert(oid, values)


def test_every_truncated_prefix_of_an_insert_is_rejected():
    data = enc_insert(16384, MIXED)
    for cut in range(len(data)):
        with pytest.raises(CdcProtocolError) as info:
            parse(data[:cut])
        if cut:
            assert "'I' truncated at byte" in str(info.value) and f"of {cut};" in str(info.value)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_truncated_prefix_is_rejected(name):
    data = CASES[name][0]
    for cut in range(len(data)):
        with pytest.raises(CdcProtocolError):
            parse(data[:cut])


def test_truncation_message_names_the_offset():
    data = enc_insert(1, ("abc",))
    with pytest.raises(CdcProtocolError) as info:
        parse(data[:-1])
    assert str(info.value) == (
        "pgoutput message 'I' truncated at byte 13 of 15; is the slot using pgoutput protocol version 1?"
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_trailing_bytes_are_rejected(name):
    data = CASES[name][0]
    with pytest.raises(CdcProtocolError, match=f"1 trailing bytes after byte {len(data)} of {len(data) + 1}"):
        parse(data + b"\x00")


def test_unknown_message_type():
    with pytest.raises(CdcProtocolError, match="unknown pgoutput message type 'Z' at byte 0"):
        parse(b"Z\x00\x00")


def test_empty_message():
    with pytest.raises(CdcProtocolError, match="empty"):
        parse(b"")


@pytest.mark.parametrize("kind", [b"S", b"E", b"c", b"A", b"b", b"P", b"K", b"r", b"p"])
def test_streaming_and_two_phase_messages_ask_for_protocol_1(kind):
    with pytest.raises(CdcProtocolError, match="proto_version '1'"):
        parse(kind + b"\x00" * 20)


def test_bad_tuple_kind():
    data = bytearray(enc_insert(1, (None, "a")))
    data[8] = ord("x")
    with pytest.raises(CdcProtocolError, match="unknown tuple value kind 'x'.* at byte 8 of"):
        parse(bytes(data))


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"I" + (1).to_bytes(4, "big") + b"K" + _tuple_data(()), "marker 'K' where 'N' belongs at byte 5"),
        (b"D" + (1).to_bytes(4, "big") + b"N" + _tuple_data(()), "marker 'N' where 'K' or 'O' belongs"),
        (b"U" + (1).to_bytes(4, "big") + b"X" + _tuple_data(()), "marker 'X' where 'K', 'O' or 'N' belongs"),
        (b"U" + (1).to_bytes(4, "big") + b"K" + _tuple_data(()) + b"O" + _tuple_data(()),
         "marker 'O' where 'N' belongs at byte 8"),
        (b"I" + (1).to_bytes(4, "big") + b"N\x00\x01t\xff\xff\xff\xff", "negative value length -1 at byte 9"),
        (b"I" + (1).to_bytes(4, "big") + b"N\x00\x01t\x00\x00\x00\x01\xff", "not valid UTF-8 at byte 13"),
        (enc_relation(1, "s", "t", "x", []), "unknown replica identity 'x'"),
        (b"Y" + (1).to_bytes(4, "big") + b"s\xff\x00t\x00", "string that is not valid UTF-8 at byte 6"),
        (b"M\x01" + bytes(8) + b"p\x00\xff\xff\xff\xff", "negative content length -1 at byte 12"),
    ],
)
def test_malformed_fields(data, pattern):
    with pytest.raises(CdcProtocolError, match=pattern):
        parse(data)


def test_error_is_a_streamml_error():
    assert issubclass(CdcProtocolError, StreammlError)


# Captured from PostgreSQL 15.18 with pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', ...),
# for tables t(id int PRIMARY KEY, name text, big text, data bytea, price numeric(10,2)), u(k int) with
# REPLICA IDENTITY FULL, big(id int PRIMARY KEY, note text, blob text STORAGE EXTERNAL) and enum type mood.
REAL_BEGIN = "420000000001532328000303f2deaf4224000002db"
REAL_COMMIT = "430000000000015323280000000001532358000303f2deaf4224"
REAL_RELATION = (
    "52000040007075626c69630074006400050169640000000017ffffffff006e616d650000000019ffffffff0062696700000000"
    "19ffffffff00646174610000000011ffffffff00707269636500000006a4000a0006"
)
REAL_UPDATE_KEY = "55000040004b00057400000001326e6e6e6e4e00057400000001336e6e6e6e"  # SET id = 3 WHERE id = 2
REAL_UPDATE_TOAST = "550000401d4e000374000000013174000000016275"  # UPDATE big SET note = 'b'
REAL_DELETE_FULL = "44000040074f0001740000000138"  # DELETE FROM u
REAL_INSERT_BINARY = "49000040004e00056200000004000000026e6e6e6e"  # with option binary 'true'
REAL_TRUNCATE = "5400000002030000400000004007"  # TRUNCATE t, u RESTART IDENTITY CASCADE
REAL_TYPE = "590000400b7075626c6963006d6f6f6400"
REAL_MESSAGE = "4d0100000000015336c870667800000000026869"  # pg_logical_emit_message(true, 'pfx', 'hi'::bytea)


def test_real_begin_and_commit():
    begin = parse(bytes.fromhex(REAL_BEGIN))
    commit = parse(bytes.fromhex(REAL_COMMIT))
    assert begin == Begin(parse_lsn("0/1532328"), 1_795_451_383_128, 731)
    assert commit == Commit(0, parse_lsn("0/1532328"), parse_lsn("0/1532358"), begin.commit_ts_ms)


def test_real_relation():
    relation = parse(bytes.fromhex(REAL_RELATION))
    assert (relation.oid, relation.namespace, relation.name) == (16384, "public", "t")
    assert relation.replica_identity == "d"
    assert [(c.name, c.type_oid, c.type_modifier, c.key) for c in relation.columns] == [
        ("id", 23, -1, True), ("name", 25, -1, False), ("big", 25, -1, False), ("data", 17, -1, False),
        ("price", 1700, (10 << 16 | 2) + 4, False),
    ]


def test_real_changes():
    key_update = Update(16384, ("2", None, None, None, None), "K", ("3", None, None, None, None))
    assert parse(bytes.fromhex(REAL_UPDATE_KEY)) == key_update
    assert parse(bytes.fromhex(REAL_UPDATE_TOAST)) == Update(16413, None, None, ("1", "b", UNCHANGED_TOAST))
    assert parse(bytes.fromhex(REAL_DELETE_FULL)) == Delete(16391, ("8",), "O")
    binary_insert = Insert(16384, ((2).to_bytes(4, "big"), None, None, None, None))
    assert parse(bytes.fromhex(REAL_INSERT_BINARY)) == binary_insert
    assert parse(bytes.fromhex(REAL_TRUNCATE)) == Truncate(3, (16384, 16391))
    assert parse(bytes.fromhex(REAL_TYPE)) == TypeInfo(16395, "public", "mood")
    assert parse(bytes.fromhex(REAL_MESSAGE)) == LogicalMessage(True, parse_lsn("0/15336C8"), "pfx", b"hi")
