"""Settings of the schema-registry process: the shared `Settings` plus where to listen and who may write.

Read once from `STREAMML_*` at start (`STREAMML_REGISTRY_HOST`, `STREAMML_REGISTRY_ADMIN_KEYS`, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from pydantic import Field, SecretStr

from streams.settings import Settings, load_settings


class RegistrySettings(Settings):
    """`registry_port` (8081) comes from the shared settings; the rest is the registry's own."""

    registry_host: str = Field("127.0.0.1", description="Interface to listen on; 0.0.0.0 to serve other hosts.")
    registry_admin_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated API keys allowed to change the registry; empty = open (local use).",
    )

    @property
    def admin_keys(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.registry_admin_keys.get_secret_value().split(",") if k.strip())

    @property
    def registry_db(self) -> Path:
        return self.home / "registry" / "registry.db"


def load_registry_settings(**overrides: Any) -> RegistrySettings:
    """`load_settings(RegistrySettings)`, typed; `ConfigError` names the bad variable."""
    return cast(RegistrySettings, load_settings(RegistrySettings, **overrides))
