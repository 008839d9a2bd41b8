"""Each feature shard's recovery state as files: a base, then one delta per epoch; Bytewax keeps a manifest.

Bytewax stores a key's whole snapshot at every epoch the key changed. With 100k users that was 45-55 MB per
10 s epoch, and the flow stood still ~0.5-0.9 s beyond our own pickling while Bytewax copied and wrote it.
Here an epoch writes only what changed since the last one (entities pickled again, log entries made final)
to a new segment file, and the snapshot Bytewax stores is the list of segments plus the entities whose log
entries are still current. Once the deltas outgrow the base, the next epoch writes a new base instead.

Files live in `<recovery dir>/state/<entity>-<shard>/`, next to Bytewax's store, and are read back only
through a manifest that store holds: a segment no manifest names is left over from a run that died before
committing, and is deleted when the shard starts. Segments replaced by a new base are deleted `keep`
snapshots later, since Bytewax may resume from a manifest a few epochs old.
"""

from __future__ import annotations

import os
import pickle
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import RecoveryError
from streams.features.shard import ShardState

MANIFEST = "streamml-state-segments/1"


@dataclass
class SegmentStore:
    """The segment files of one shard (one Bytewax key); `save` at each epoch, `load` on resume."""

    root: Path
    key: str  # "user:7"
    keep: int = 5
    max_segments: int = 32  # a new base also once there are this many files (tiny deltas of a quiet shard)
    segments: list[tuple[str, int]] = field(default_factory=list)  # (file name, bytes): the base, then deltas
    last_bytes: int = 0  # what the last save wrote to its segment
    _retired: list[tuple[int, list[str]]] = field(default_factory=list)  # (saves when replaced, file names)
    _saves: int = 0

    @property
    def dir(self) -> Path:
        return self.root / self.key.replace(":", "-")

    def save(self, state: ShardState) -> bytes:
        """Write what changed since the last save (or a new base), return the manifest for Bytewax."""
        delta = state.delta()
        base = self.segments[0][1] if self.segments else 0
        if (not self.segments or len(self.segments) >= self.max_segments
                or sum(size for _, size in self.segments[1:]) > base):
            frozen, chunks = state.everything()
            data = pickle.dumps((frozen, chunks), protocol=pickle.HIGHEST_PROTOCOL)
            if self.segments:
                self._retired.append((self._saves, [name for name, _ in self.segments]))
            self.segments = []
        else:
            data = pickle.dumps((delta.entities, delta.chunks), protocol=pickle.HIGHEST_PROTOCOL)
        self.segments.append((self._write(data), len(data)))
        self.last_bytes = len(data)
        self._saves += 1
        while self._retired and self._saves - self._retired[0][0] > self.keep:
            for name in self._retired.pop(0)[1]:
                (self.dir / name).unlink(missing_ok=True)
        return pickle.dumps((MANIFEST, self.key, self.segments, delta.windows, delta.high),
                            protocol=pickle.HIGHEST_PROTOCOL)

    def _write(self, data: bytes) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{self._saves:09d}-{uuid.uuid4().hex[:12]}.seg"
        with open(self.dir / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # as durable as the manifest Bytewax commits after it
        return name

    def load(self, manifest: tuple) -> tuple[dict[str, bytes], dict[int, tuple[list[bytes], list[str]]], int]:
        """The shard's pickled entities, open windows and event-time high as of `manifest` (see `save`)."""
        _, _, segments, windows, high = manifest
        frozen: dict[str, bytes] = {}
        chunks: dict[int, list[bytes]] = {}
        for name, size in segments:
            try:
                data = (self.dir / name).read_bytes()
                if len(data) != size:
                    raise ValueError(f"{len(data)} bytes where the manifest says {size}")
                entities, parts = pickle.loads(data)
            except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
                raise self._lost(f"state segment {self.dir / name} of shard {self.key} cannot be read ({exc}). "
                                 "Segments must stay next to the recovery store that names them") from exc
            for eid, data in entities.items():
                if data is None:
                    frozen.pop(eid, None)
                else:
                    frozen[eid] = data
            for k, more in parts.items():
                chunks.setdefault(k, []).extend(more)
        opened = {}
        for k, (n, live) in windows.items():
            got = chunks.get(k, [])
            if len(got) < n:
                raise self._lost(f"the state segments of shard {self.key} hold {len(got)} log chunks of window {k}, "
                                 f"the manifest names {n}")
            opened[k] = got[len(got) - n:], live  # its latest: a window closed and opened again left older ones
        self.segments = [tuple(s) for s in segments]
        self.clean()
        return frozen, opened, high

    def _lost(self, what: str) -> RecoveryError:
        return RecoveryError.start_over(what, str(self.root.parent))

    def clean(self) -> None:
        """Delete the files of this shard that the current manifest does not name (all, before a first save)."""
        named = {name for name, _ in self.segments}
        if self.dir.is_dir():
            for path in self.dir.iterdir():
                if path.name not in named:
                    path.unlink(missing_ok=True)


def is_manifest(snapshot: Any) -> bool:
    """Whether a resumed Bytewax snapshot is a manifest (`save`) rather than a whole shard state."""
    return isinstance(snapshot, tuple) and len(snapshot) == 5 and snapshot[0] == MANIFEST
