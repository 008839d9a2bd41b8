"""Real servers for tests: Tansu (Kafka API), Redis and PostgreSQL on free loopback ports, torn down afterwards."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from services.stack.binaries import redis_argv, tansu_argv
from services.stack.health import port_open, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """`wait_until` that tolerates a failing probe and raises when time runs out."""

    def safe() -> bool:
        try:
            return bool(check())
        except Exception:
            return False

    if not wait_until(safe, timeout_s, interval_s=0.05):
        raise TimeoutError(f"{what} not ready after {timeout_s}s")


class ServerProcess:
    """A child process with a log file; stops with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], port: int, log_dir: Path):
        self.name, self.argv, self.port = name, argv, port
        self.log_path = log_dir / f"{name}-{port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 20.0) -> ServerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), timeout_s, f"{self.name} on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(19)  # SIGSTOP

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(18)  # SIGCONT


def start_tansu(log_dir: Path) -> ServerProcess:
    port = free_port()
    server = ServerProcess("tansu", tansu_argv(port), port, log_dir).start()
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
    wait_for(lambda: admin.list_topics(timeout=1) is not None, 20, "tansu metadata")
    return server


def start_redis(log_dir: Path, password: str | None = None) -> ServerProcess:
    port = free_port()
    data = log_dir / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    return ServerProcess("redis", redis_argv(port, data, password), port, log_dir).start()


# --- PostgreSQL (logical replication) ------------------------------------------------------------

PG_APT_HINT = "install the Debian package: apt-get install postgresql"


def postgres_binaries() -> tuple[Path, Path]:
    """(initdb, postgres): `pg_config --bindir`, else the highest /usr/lib/postgresql/*/bin, else PATH."""

    def pair(bindir: Path) -> tuple[Path, Path] | None:
        initdb, postgres = bindir / "initdb", bindir / "postgres"
        return (initdb, postgres) if initdb.is_file() and postgres.is_file() else None

    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout
            if out.strip() and (found := pair(Path(out.strip()))):
                return found
        except (OSError, subprocess.SubprocessError):
            pass

    def major(bindir: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in bindir.parent.name.split("."))
        except ValueError:
            return (-1,)

    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True):
        if found := pair(bindir):
            return found
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        return Path(initdb), Path(postgres)
    raise RuntimeError(f"no PostgreSQL server binaries (initdb, postgres) found; {PG_APT_HINT}")


def _postgres_os_user() -> pwd.struct_passwd:
    """The OS user that runs initdb/postgres when we are root (postgres refuses to run as root)."""
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return pwd.getpwnam("postgres")
    except (OSError, subprocess.SubprocessError, KeyError):
        return pwd.getpwnam("nobody")


class PostgresServer(ServerProcess):
    """A throwaway PostgreSQL cluster (wal_level=logical, trust auth) on a free loopback port.

    The postmaster is our child process itself (setuid in the child, no runuser wrapper that would
    swallow SIGSTOP or turn SIGINT into SIGTERM). Its backends each call setsid(), so pause()/resume()
    and the last-resort SIGKILL signal the postmaster and each of its children by pid. stop() is a
    fast shutdown (SIGINT: disconnects clients, incl. walsenders), then SIGKILL; the data dir is removed.
    """

    SUPERUSER = "postgres"

    def __init__(self, port: int, log_dir: Path):
        self.initdb, self.postgres = postgres_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="streamml-pg-"))
        self.data = self.root / "data"
        self.run_as = _postgres_os_user() if os.geteuid() == 0 else None
        argv = [str(self.postgres), "-D", str(self.data), "-p", str(port)]
        for key, value in {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "wal_level": "logical",
            "max_replication_slots": "10",
            "max_wal_senders": "10",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "wal_sender_timeout": "60s",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
        }.items():
            argv += ["-c", f"{key}={value}"]
        super().__init__("postgres", argv, port, log_dir)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _as_user(self) -> dict:
        """Popen kwargs that drop root to the postgres OS user (setuid in the child, no wrapper process)."""
        if self.run_as is None:
            return {}
        return {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        if self.run_as is not None:
            os.chown(self.root, self.run_as.pw_uid, self.run_as.pw_gid)
        os.chmod(self.root, 0o755)
        argv = [str(self.initdb), "-D", str(self.data), "-A", "trust", "-U", self.SUPERUSER]
        argv += ["--no-sync", "-E", "UTF8", "--locale=C"]
        done = subprocess.run(
            argv, cwd=self.root, capture_output=True, text=True, timeout=120, **self._as_user()
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stdout}\n{done.stderr}")
        hba = self.data / "pg_hba.conf"
        wanted = ["host", "replication", "all", "127.0.0.1/32", "trust"]
        if not any(line.split() == wanted for line in hba.read_text().splitlines()):
            with open(hba, "a") as f:
                f.write("host    replication     all             127.0.0.1/32            trust\n")

    def _ready(self) -> bool:
        import psycopg2

        conn = psycopg2.connect(self.dsn(), connect_timeout=2)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() == (1,)
        finally:
            conn.close()

    def start(self, timeout_s: float = 60.0) -> PostgresServer:
        try:
            self._initdb()
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,
                **self._as_user(),
            )
            wait_for(
                lambda: self.proc.poll() is not None or self._ready(), timeout_s, f"postgres on {self.port}"
            )
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}; see {self.log_path}")
        except BaseException:
            self.stop()
            raise
        return self

    def _signal_all(self, sig: int) -> None:
        """Signal the postmaster and its children (found by parent pid in /proc)."""
        assert self.proc is not None
        pids = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown (SIGTERM = smart: waits for clients)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self._signal_all(signal.SIGKILL)
                self.proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)

    def pause(self) -> None:
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def recreate_database(self, name: str, timeout_s: float = 10.0) -> str:
        """Drop `name` (after its replication slots, killing their walsenders) and create it anew; its DSN."""
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.dsn())
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:

                def slots_gone() -> bool:
                    cur.execute(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                        " WHERE database = %s AND active_pid IS NOT NULL",
                        (name,),
                    )
                    cur.execute(
                        "SELECT slot_name FROM pg_replication_slots WHERE database = %s AND NOT active",
                        (name,),
                    )
                    for (slot,) in cur.fetchall():
                        cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    cur.execute("SELECT count(*) FROM pg_replication_slots WHERE database = %s", (name,))
                    return cur.fetchone()[0] == 0

                wait_for(slots_gone, timeout_s, f"replication slots of database {name} dropped")
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return self.dsn(name)


def start_postgres(log_dir: Path) -> PostgresServer:
    return PostgresServer(free_port(), log_dir).start()
