"""Which WAL position may be confirmed to PostgreSQL: only what Kafka has acknowledged, in commit order.

Pure bookkeeping, driven by the reader's thread (librdkafka delivery callbacks run inside `poll`):
a transaction becomes confirmable once it committed and every record it produced was acknowledged,
and only after every earlier transaction did. Confirming less is safe (PostgreSQL resends); confirming
more would lose changes on a restart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class Txn:
    """One source transaction in flight: records sent and not yet acknowledged, and its end LSN once committed."""

    __slots__ = ("xid", "pending", "end_lsn", "commit_ts_ms")

    def __init__(self, xid: int, commit_ts_ms: int = 0):
        self.xid = xid
        self.commit_ts_ms = commit_ts_ms
        self.pending = 0
        self.end_lsn: int | None = None


class AckTracker:
    """Transactions in commit order; `confirmable()` is the end LSN of the longest fully acknowledged prefix."""

    def __init__(self, confirmed_lsn: int = 0, on_complete: Callable[[Txn], None] | None = None):
        self._txns: deque[Txn] = deque()
        self._on_complete = on_complete  # called once per transaction when its last record is acknowledged
        self.confirmed_lsn = confirmed_lsn
        self.failure: str | None = None  # the first delivery error; the reader stops on it
        self.unacked = 0  # records sent and not yet acknowledged, across transactions

    def begin(self, xid: int, commit_ts_ms: int = 0) -> Txn:
        txn = Txn(xid, commit_ts_ms)
        self._txns.append(txn)
        return txn

    def sent(self, txn: Txn) -> None:
        txn.pending += 1
        self.unacked += 1

    def acked(self, txn: Txn, error: str | None = None) -> None:
        """A delivery report; an error is kept (and blocks confirmation past `txn` for good)."""
        if error is not None:
            if self.failure is None:
                self.failure = error
            return
        txn.pending -= 1
        self.unacked -= 1
        if txn.pending == 0 and txn.end_lsn is not None and self._on_complete:
            self._on_complete(txn)

    def commit(self, txn: Txn, end_lsn: int) -> None:
        txn.end_lsn = end_lsn
        if txn.pending == 0 and self._on_complete:
            self._on_complete(txn)

    def confirmable(self) -> int:
        """Advance past every leading transaction that is committed and fully acknowledged."""
        txns = self._txns
        while txns and txns[0].end_lsn is not None and txns[0].pending == 0:
            end = txns.popleft().end_lsn
            if end > self.confirmed_lsn:
                self.confirmed_lsn = end
        return self.confirmed_lsn

    def idle(self) -> bool:
        """No transaction in flight: everything received so far is confirmed."""
        self.confirmable()
        return not self._txns

    @property
    def in_flight(self) -> int:
        return len(self._txns)

    def oldest_commit_ms(self) -> int | None:
        """Commit time of the oldest unconfirmed transaction (how far confirmation lags), or None."""
        return self._txns[0].commit_ts_ms if self._txns else None

    def advance_idle(self, lsn: int) -> int:
        """With nothing in flight, the server's reported WAL end may be confirmed (as pg_recvlogical does)."""
        if self.idle() and lsn > self.confirmed_lsn:
            self.confirmed_lsn = lsn
        return self.confirmed_lsn
