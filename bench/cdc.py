"""Benchmark: CDC reader throughput and latency: PostgreSQL -> Kafka.

Starts its own Tansu, Redis, registry and PostgreSQL (wal_level=logical), creates the shop tables and
pre-loads N users, then measures (1) the initial snapshot: from the reader's start until every row was
emitted as op r, acknowledged by Kafka and the slot streams, (2) streaming throughput: M UPDATEs in
transactions of T rows written as fast as one connection can, until the slot's confirmed_flush_lsn passes
the last commit (Kafka acknowledged all of it), against (3) the ceiling in the same run: the same changes
decoded by PostgreSQL from a second pgoutput slot and parsed by our pgoutput parser, no Avro and no Kafka,
and (4) commit-to-acknowledgement latency of single-row transactions at a fixed rate (synchronous_commit on by
default), from the reader's histogram (this phase's observations only), against its floor in the same run: the
same commits as received from a bare pgoutput slot. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cpu import process_cpu_s  # noqa: E402

SLOT, CEILING_SLOT, FLOOR_SLOT, PUBLICATION = "streamml_cdc", "bench_ceiling", "bench_floor", "streamml_cdc"
COUNTRIES = ["DE", "FR", "NL", "IT", "ES", "PL", "SE", "AT"]


def changes_counted(metrics_url: str, op: str, table: str = "public.users") -> float:
    """streamml_cdc_changes_total for (table, op), whatever the label order."""
    text = httpx.get(metrics_url, timeout=5).text
    for labels, value in re.findall(r"^streamml_cdc_changes_total\{([^}]*)\} (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if found.get("op") == op and found.get("table") == table:
            return float(value)
    return 0.0


def scalar(conn, statement: str, params: tuple = ()):
    with conn.cursor() as cur:
        cur.execute(statement, params)
        row = cur.fetchone() if cur.description else None
    return None if row is None else row[0]


def slot_active(conn) -> bool:
    return bool(scalar(conn, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)))


def confirmed_flush(conn) -> int:
    from streams.cdc.pgoutput import parse_lsn

    text = scalar(conn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))
    return parse_lsn(text) if text else 0


def insert_lsn(conn) -> int:
    from streams.cdc.pgoutput import parse_lsn

    return parse_lsn(scalar(conn, "SELECT pg_current_wal_insert_lsn()::text"))


def wait_confirmed(conn, lsn: int, timeout_s: float) -> float:
    """Poll the slot until its confirmed_flush_lsn >= `lsn`; perf_counter time it was seen, else raise."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if confirmed_flush(conn) >= lsn:
            return time.perf_counter()
        time.sleep(0.02)
    raise TimeoutError(f"the slot did not confirm {lsn:X} within {timeout_s}s")


def peak_rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return round(int(m[1]) / 1024, 1) if m else None


def log_event(log: Path, event: str) -> dict | None:
    """The reader's last JSON log line whose event is `event`."""
    found = None
    for line in log.read_text(errors="replace").splitlines():
        if event in line:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                found = record
    return found


def write_updates(dsn: str, rows: int, changes: int, txn_rows: int) -> tuple[int, float, float]:
    """`changes` UPDATEs of users in transactions of `txn_rows`, flat out on one connection.
    Returns (rows changed, perf_counter time of the first write, seconds until the last commit)."""
    conn = psycopg2.connect(dsn)
    done = 0
    try:
        with conn.cursor() as cur:
            started = time.perf_counter()
            t = 0
            while done < changes:
                size = min(txn_rows, changes - done, rows)
                ids = [f"u{(done + i) % rows + 1}" for i in range(size)]
                cur.execute("UPDATE users SET country = %s WHERE user_id = ANY(%s)", (COUNTRIES[t % len(COUNTRIES)], ids))
                done += cur.rowcount
                conn.commit()
                t += 1
            elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return done, started, elapsed


def ceiling(dsn: str, changes: int, timeout_s: float) -> float:
    """Read the ceiling slot (pgoutput, created before the writes) with psycopg2 and parse every message until
    `changes` inserts/updates/deletes were seen; changes per second (PostgreSQL's decoding + our parser)."""
    from psycopg2.extras import LogicalReplicationConnection

    from streams.cdc.pgoutput import Delete, Insert, Update, parse

    changed = (Insert, Update, Delete)
    conn = psycopg2.connect(dsn, connection_factory=LogicalReplicationConnection)
    try:
        cur = conn.cursor()
        started = time.perf_counter()
        cur.start_replication(slot_name=CEILING_SLOT, decode=False,
                              options={"proto_version": "1", "publication_names": PUBLICATION})
        seen = 0
        deadline = started + timeout_s
        while seen < changes:
            msg = cur.read_message()
            if msg is not None:
                if type(parse(msg.payload)) in changed:
                    seen += 1
                continue
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the ceiling slot gave {seen} of {changes} changes in {timeout_s}s")
            select.select([cur], [], [], 1.0)
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return changes / elapsed


def drop_slot(conn, name: str, timeout_s: float = 10.0) -> None:
    """Drop `name` once its walsender has gone (closing the connection does not stop it at once)."""
    from tests.servers import wait_for

    def dropped() -> bool:
        if scalar(conn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (name,)) == 0:
            return True
        scalar(conn, "SELECT pg_drop_replication_slot(%s)", (name,))
        return True

    wait_for(dropped, timeout_s, f"replication slot {name} dropped")


def paced_updates(dsn: str, rows: int, rate: float, seconds: float, commit: str) -> tuple[int, float]:
    """Single-row UPDATE transactions at `rate`/s for `seconds`, open loop (late ones go at once, none skipped),
    with synchronous_commit = `commit`. Returns (transactions, seconds taken)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    n = int(rate * seconds)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET synchronous_commit = {'on' if commit == 'on' else 'off'}")
            started = time.perf_counter()
            for i in range(n):
                ahead = started + i / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
                cur.execute("UPDATE users SET country = %s WHERE user_id = %s",
                            (COUNTRIES[i % len(COUNTRIES)], f"u{i % rows + 1}"))
            elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return n, elapsed


class DecodeWatcher(threading.Thread):
    """The latency floor, measured on the same writes: commit -> its pgoutput Commit message received from a
    bare slot (PostgreSQL's decoding and walsender, no reader, no Kafka)."""

    def __init__(self, dsn: str, slot: str):
        super().__init__(daemon=True)
        self.dsn, self.slot = dsn, slot
        self.lags_ms: list[float] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from psycopg2.extras import LogicalReplicationConnection

        from streams.cdc.pgoutput import Commit, parse

        try:
            conn = psycopg2.connect(self.dsn, connection_factory=LogicalReplicationConnection)
            try:
                cur = conn.cursor()
                cur.start_replication(slot_name=self.slot, decode=False,
                                      options={"proto_version": "1", "publication_names": PUBLICATION})
                while not self.stop.is_set():
                    msg = cur.read_message()
                    if msg is None:
                        select.select([cur], [], [], 0.1)
                        continue
                    message = parse(msg.payload)
                    if type(message) is Commit:
                        self.lags_ms.append(time.time() * 1000 - message.commit_ts_ms)
            finally:
                conn.close()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def quantile_ms(self, q: float) -> float:
        lags = sorted(self.lags_ms)
        return round(lags[min(len(lags) - 1, int(q * len(lags)))], 1) if lags else float("nan")


def stop_reader(proc: subprocess.Popen | None) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="users pre-loaded, emitted by the snapshot")
    parser.add_argument("--changes", type=int, default=100_000, help="UPDATEd rows in the throughput phase")
    parser.add_argument("--txn-rows", type=int, default=100, help="rows per transaction in the throughput phase")
    parser.add_argument("--rate", type=float, default=200, help="single-row transactions/s in the latency phase")
    parser.add_argument("--seconds", type=float, default=15, help="length of the latency phase")
    parser.add_argument("--commit", choices=["on", "off"], default="on",
                        help="synchronous_commit of the latency phase's writes (the test cluster's default is off, "
                             "which delays decoding until the WAL writer flushes, 200-600 ms)")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    from feature_flow import histogram, quantile, start_servers

    from tests.pgkit import DDL, sql
    from tests.servers import free_port, start_postgres

    work = Path(tempfile.mkdtemp(prefix="streamml-bench-cdc-"))
    log = work / "cdc.log"
    result: dict = {"benchmark": "cdc", "rows": args.rows, "changes": args.changes, "txn_rows": args.txn_rows,
                    "latency_rate": args.rate, "latency_seconds": args.seconds,
                    "latency_synchronous_commit": args.commit, "partitions": args.partitions,
                    "cpus": os.cpu_count(), "feedback_s": 0.2}
    servers = start_servers(work, args.partitions)
    pg = reader = admin = None
    try:
        pg = start_postgres(work)
        dsn = pg.recreate_database("shop")
        sql(dsn, DDL)
        admin = psycopg2.connect(dsn)
        admin.autocommit = True
        result["postgres_version"] = scalar(admin, "SHOW server_version")
        started = time.perf_counter()
        sql(dsn, "INSERT INTO users SELECT 'u' || n, 'free', 'DE', now(), false "
                 f"FROM generate_series(1, {args.rows}) n")
        scalar(admin, "VACUUM ANALYZE users")
        result["preload_s"] = round(time.perf_counter() - started, 2)

        # 1. Snapshot: reader start -> every row emitted, acknowledged, and the slot streaming.
        port = free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        env = {**os.environ, "STREAMML_HOME": str(work / "home"), "STREAMML_KAFKA_BOOTSTRAP_SERVERS": servers.bootstrap,
               "STREAMML_SCHEMA_REGISTRY_URL": servers.registry_url, "STREAMML_CDC_DSN": dsn,
               "STREAMML_CDC_TABLES": "public.users,public.items", "STREAMML_CDC_METRICS_PORT": str(port),
               "STREAMML_CDC_FEEDBACK_S": "0.2", "STREAMML_TOPIC_PARTITIONS": str(args.partitions),
               "STREAMML_LOG_LEVEL": "INFO"}
        launched = time.perf_counter()
        reader = subprocess.Popen([sys.executable, "-m", "services.cli", "cdc"], cwd=ROOT, env=env,
                                  stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        deadline = launched + 600
        while not (log_event(log, "snapshot done") and slot_active(admin)):
            if reader.poll() is not None:
                raise RuntimeError(f"the reader exited with {reader.returncode}; see {log}")
            if time.perf_counter() > deadline:
                raise TimeoutError("the snapshot did not finish in 600s")
            time.sleep(0.05)
        snapshot_s = time.perf_counter() - launched
        counted = changes_counted(url, "r")
        done = log_event(log, "snapshot done") or {}
        result.update({
            "snapshot_rows": int(counted), "snapshot_s": round(snapshot_s, 2),
            "snapshot_rows_per_s": round(counted / snapshot_s),
            "snapshot_reader_s": done.get("seconds"),  # the reader's own figure: read + produce + acknowledged
            "snapshot_reader_cpu_s": round(process_cpu_s(reader.pid), 2),
        })
        if counted != args.rows:
            result["snapshot_error"] = f"{counted:g} op r counted, {args.rows} rows"

        # 2. Streaming throughput, with the ceiling slot created before the writes.
        scalar(admin, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (CEILING_SLOT,))
        cpu_before = process_cpu_s(reader.pid)
        u_before = changes_counted(url, "u")
        changed, first_write, write_s = write_updates(dsn, args.rows, args.changes, args.txn_rows)
        target = insert_lsn(admin)
        confirmed = wait_confirmed(admin, target, 900)
        stream_s = confirmed - first_write
        result.update({
            "changes": changed, "write_s": round(write_s, 2), "stream_s": round(stream_s, 2),
            "stream_changes_per_s": round(changed / stream_s),
            "stream_counted": int(changes_counted(url, "u") - u_before),
            "stream_reader_cpu_s": round(process_cpu_s(reader.pid) - cpu_before, 2),
        })

        # 3. Ceiling: PostgreSQL's decoding of the same changes + our parser, no Avro, no Kafka.
        result["ceiling_changes_per_s"] = round(ceiling(dsn, changed, 600))
        result["ratio"] = round(result["stream_changes_per_s"] / result["ceiling_changes_per_s"], 3)
        drop_slot(admin, CEILING_SLOT)

        # 4. Latency of single-row transactions at a fixed rate (this phase's observations only), and its floor:
        # the same commits as received from a bare pgoutput slot.
        name = "streamml_cdc_commit_to_ack_seconds"
        scalar(admin, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (FLOOR_SLOT,))
        watcher = DecodeWatcher(dsn, FLOOR_SLOT)
        watcher.start()
        time.sleep(1)
        before = histogram(url, name)
        n, paced_s = paced_updates(dsn, args.rows, args.rate, args.seconds, args.commit)
        wait_confirmed(admin, insert_lsn(admin), 120)
        time.sleep(0.5)
        after = histogram(url, name)
        watcher.stop.set()
        watcher.join(10)
        drop_slot(admin, FLOOR_SLOT)
        delta = {b: after[b] - before.get(b, 0.0) for b in after}
        result.update({
            "latency_txns": n, "latency_rate_achieved": round(n / paced_s, 1),
            "latency_observed": int(delta.get(float("inf"), 0)),
            "commit_to_ack_p50_ms": round(quantile(delta, 0.5) * 1000, 1),
            "commit_to_ack_p99_ms": round(quantile(delta, 0.99) * 1000, 1),
            "commit_to_decode_p50_ms": watcher.quantile_ms(0.5),
            "commit_to_decode_p99_ms": watcher.quantile_ms(0.99),
            "decode_observed": len(watcher.lags_ms),
            "reader_peak_rss_mb": peak_rss_mb(reader.pid),
        })
        if watcher.error is not None:
            result["decode_error"] = repr(watcher.error)
        result["ceiling"] = ("ceiling_changes_per_s: the same changes read from a second pgoutput slot with psycopg2 "
                             "and parsed by streams.cdc.pgoutput, no Avro, no Kafka; ratio = stream / ceiling. "
                             "commit_to_decode_*: the latency phase's commits received from a bare slot (exact "
                             "quantiles; commit_to_ack_* interpolate the reader's histogram buckets)")
        result["reader_log"] = str(log)
    finally:
        result["reader_exit"] = stop_reader(reader)
        if admin is not None:
            for slot in (CEILING_SLOT, FLOOR_SLOT):
                try:
                    drop_slot(admin, slot)
                except Exception:  # noqa: S110 - best effort; the cluster is removed next
                    pass
            admin.close()
        if pg is not None:
            pg.stop()
        servers.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
