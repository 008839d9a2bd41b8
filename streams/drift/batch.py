"""Prediction log records of one partition as columns, so a window's bins are counted with numpy.

Built either from an Arrow record batch (`schemas.bulk`, the fast path: no Python object per record)
or from decoded dicts (records that had to be decoded one by one, and the tests). Both give the same
columns, so both count the same. Pure: no I/O.

Feature values are kept as entries (row, feature code, kind, value): a number as float64, a string as
a code into `strings`; a null value is not an entry (it is not counted, as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NUMBER, STRING = 1, 2


def _codes(column: pa.Array) -> tuple[np.ndarray, list[str]]:
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def _intern(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))
    return codes, list(index)


@dataclass
class PredictionBatch:
    """Columns of n records (offset order) and their feature entries."""

    offsets: np.ndarray  # int64 [n]
    ts: np.ndarray  # int64 [n]
    score: np.ndarray  # float64 [n]
    version_codes: np.ndarray  # int64 [n], into `versions`
    versions: list[tuple[str, str]]  # (model, model_version)
    entry_row: np.ndarray  # int64 [e]
    entry_feature: np.ndarray  # int64 [e], into `features`
    entry_kind: np.ndarray  # int8 [e]: NUMBER or STRING
    entry_number: np.ndarray  # float64 [e] (NaN unless NUMBER)
    entry_string: np.ndarray  # int64 [e], into `strings` (-1 unless STRING)
    features: list[str]
    strings: list[str]
    source: pa.RecordBatch | list[dict[str, Any]]  # for `records`: the rows as dicts, on demand
    source_rows: np.ndarray | None = None  # row -> its row in `source` (None: the same)

    def __len__(self) -> int:
        return len(self.offsets)

    @classmethod
    def from_arrow(cls, offsets: np.ndarray, batch: pa.RecordBatch) -> PredictionBatch:
        """From a PredictionLog batch decoded by arrow-avro (map<string, union<null, double, string>>)."""
        models, model_names = _codes(batch.column("model"))
        versions, version_names = _codes(batch.column("model_version"))
        _, first, version_codes = np.unique(models * max(len(version_names), 1) + versions,
                                                return_index=True, return_inverse=True)
        names = [(model_names[models[r]], version_names[versions[r]]) for r in first]
        features = batch.column("features")
        map_offsets = features.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        entry_row = np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(map_offsets))
        entry_feature, feature_names = _codes(features.keys) if len(features.keys) else (np.zeros(0, np.int64), [])
        items = features.items
        type_codes = items.type_codes.to_numpy(zero_copy_only=False)
        value_at = items.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        kind = np.zeros(len(items), dtype=np.int8)
        number = np.full(len(items), np.nan)
        string = np.full(len(items), -1, dtype=np.int64)
        string_names: list[str] = []
        for child, code in enumerate(items.type.type_codes):
            at = type_codes == code
            if not at.any():
                continue
            values = items.field(child)
            if pa.types.is_floating(values.type):
                kind[at] = NUMBER
                number[at] = values.to_numpy(zero_copy_only=False)[value_at[at]]
            elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
                codes, string_names = _codes(values)
                kind[at] = STRING
                string[at] = codes[value_at[at]]
            elif not pa.types.is_null(values.type):
                raise TypeError(f"feature values of type {values.type} are not numbers or strings")
        keep = kind != 0
        return cls(offsets=np.asarray(offsets, dtype=np.int64), ts=batch.column("ts").to_numpy().astype(np.int64),
                   score=batch.column("score").to_numpy().astype(np.float64), version_codes=version_codes,
                   versions=names, entry_row=entry_row[keep], entry_feature=entry_feature[keep],
                   entry_kind=kind[keep], entry_number=number[keep], entry_string=string[keep],
                   features=feature_names, strings=string_names, source=batch)

    @classmethod
    def from_records(cls, items: Sequence[tuple[int, dict[str, Any]]]) -> PredictionBatch:
        """From (offset, decoded PredictionLog dict) pairs."""
        version_codes, versions = _intern([(r["model"], r["model_version"]) for _, r in items])  # type: ignore[misc]
        feature_index: dict[str, int] = {}
        string_index: dict[str, int] = {}
        rows, feats, kinds, numbers, strings = [], [], [], [], []
        for row, (_, record) in enumerate(items):
            for name, value in record["features"].items():
                if value is None:
                    continue
                rows.append(row)
                feats.append(feature_index.setdefault(name, len(feature_index)))
                if isinstance(value, str):
                    kinds.append(STRING)
                    numbers.append(np.nan)
                    strings.append(string_index.setdefault(value, len(string_index)))
                else:
                    kinds.append(NUMBER)
                    numbers.append(float(value))
                    strings.append(-1)
        return cls(offsets=np.fromiter((o for o, _ in items), dtype=np.int64, count=len(items)),
                   ts=np.fromiter((r["ts"] for _, r in items), dtype=np.int64, count=len(items)),
                   score=np.fromiter((r["score"] for _, r in items), dtype=np.float64, count=len(items)),
                   version_codes=version_codes, versions=versions,  # type: ignore[arg-type]
                   entry_row=np.asarray(rows, dtype=np.int64), entry_feature=np.asarray(feats, dtype=np.int64),
                   entry_kind=np.asarray(kinds, dtype=np.int8), entry_number=np.asarray(numbers, dtype=np.float64),
                   entry_string=np.asarray(strings, dtype=np.int64), features=list(feature_index),
                   strings=list(string_index), source=[r for _, r in items])

    def subset(self, keep: np.ndarray) -> PredictionBatch:
        """The rows where the boolean mask `keep` is true, in the same order."""
        at = keep[self.entry_row]
        renumber = np.cumsum(keep) - 1
        source_rows = np.flatnonzero(keep) if self.source_rows is None else self.source_rows[keep]
        return PredictionBatch(
            offsets=self.offsets[keep], ts=self.ts[keep], score=self.score[keep],
            version_codes=self.version_codes[keep], versions=self.versions, entry_row=renumber[self.entry_row[at]],
            entry_feature=self.entry_feature[at], entry_kind=self.entry_kind[at], entry_number=self.entry_number[at],
            entry_string=self.entry_string[at], features=self.features, strings=self.strings, source=self.source,
            source_rows=source_rows)

    def records(self, rows: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The given rows as decoded dicts (for dead letters and reference sampling: the rare paths)."""
        rows = [int(r) for r in (rows if self.source_rows is None else self.source_rows[np.asarray(rows, np.int64)])]
        if isinstance(self.source, list):
            return [self.source[r] for r in rows]
        out = self.source.take(pa.array(rows, type=pa.int64())).to_pylist() if rows else []
        for record in out:
            record["entities"] = dict(record["entities"])
            record["features"] = dict(record["features"])
        return out

    def values(self, feature: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A feature's values in the selected rows (a boolean mask over rows): numbers, and string codes
        into `strings`."""
        try:
            code = self.features.index(feature)
        except ValueError:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        at = (self.entry_feature == code) & rows[self.entry_row]
        return self.entry_number[at & (self.entry_kind == NUMBER)], self.entry_string[at & (self.entry_kind == STRING)]
