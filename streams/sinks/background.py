"""A sink's writes on a thread of its own, so the flow computes the next batch while the write runs.

Used where the write mostly waits or runs outside the GIL (a Redis round trip, Parquet encoding and
compression), so the thread gets the machine's other core. `wait(seq)` is what a sink's `snapshot`
calls: an epoch commits only once its writes landed, so exactly-once stays intact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

T = TypeVar("T")


class BackgroundWriter(Generic[T]):
    """Calls `write(items)` on its own thread for each submission, in order; submissions that queued up
    meanwhile go to one call, concatenated. `on_close` runs once the thread has stopped."""

    def __init__(self, write: Callable[[list[T]], object], name: str, on_close: Callable[[], object] | None = None):
        self._write, self._name, self._on_close = write, name, on_close
        self._queue: list[tuple[int, list[T]]] = []
        self._cond = threading.Condition()
        self._submitted = self._done = 0
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, items: list[T]) -> int:
        """Queue `items`; returns their sequence number for `wait`."""
        with self._cond:
            self._submitted += 1
            self._queue.append((self._submitted, items))
            self._cond.notify_all()
            return self._submitted

    def wait(self, seq: int | None = None) -> None:
        """Block until submission `seq` (default: all) is written; re-raises the error that stopped the thread."""
        with self._cond:
            target = self._submitted if seq is None else seq
            while self._done < target and self._thread.is_alive():
                self._cond.wait(1.0)
            if self._done < target:
                raise self._error or RuntimeError(f"the {self._name} thread stopped")

    @property
    def alive(self) -> bool:
        """False once the thread stopped (after `close`, or a write error)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                work, self._queue = self._queue, []
            try:
                self._write([item for _, items in work for item in items])
            except BaseException as exc:
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._done = work[-1][0]
                self._cond.notify_all()

    def close(self) -> None:
        """Wait for everything submitted, then stop the thread."""
        try:
            self.wait()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join(10)
            if self._on_close is not None:
                self._on_close()


_SHARED: dict[Hashable, BackgroundWriter] = {}
_SHARED_LOCK = threading.Lock()


def shared_writer(key: Hashable, new: Callable[[], BackgroundWriter[T]]) -> BackgroundWriter[T]:
    """The process's one writer for `key` (made by `new` on first use, or after the last one stopped): one thread
    per target, shared by the sink partitions Bytewax builds on this process."""
    with _SHARED_LOCK:
        writer = _SHARED.get(key)
        if writer is None or not writer.alive:
            writer = _SHARED[key] = new()
        return writer


class _Partition(StatefulSinkPartition[T, None]):
    def __init__(self, shard: str, writer: BackgroundWriter[tuple[str, T]]):
        self._shard, self._writer = shard, writer
        self._last = 0

    def write_batch(self, items: list[T]) -> None:
        shard = self._shard
        self._last = self._writer.submit([(shard, item) for item in items])

    def snapshot(self) -> None:
        self._writer.wait(self._last)  # the epoch's writes landed before it commits

    def close(self) -> None:
        self._writer.wait(self._last)


class ShardedSink(FixedPartitionedSink[T, None]):
    """A Bytewax sink with one partition per state shard (`user:3`, the key items come with), all writing
    (shard, item) pairs through the process's shared writer for `key`; a snapshot waits for the epoch's writes."""

    def __init__(self, shard_keys: list[str], key: Hashable, new: Callable[[], BackgroundWriter[tuple[str, T]]]):
        self._parts, self._key, self._new = sorted(shard_keys), key, new

    def list_parts(self) -> list[str]:
        return self._parts

    def part_fn(self, item_key: str) -> int:
        return self._parts.index(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Partition[T]:
        return _Partition(for_part, shared_writer(self._key, self._new))
