"""docker-compose.yml stays consistent with the code: settings it sets exist, commands it runs exist."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.cli import PROCESSES, _register_subcommands, app
from streams.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_production_like_services():
    services = _compose()["services"]
    assert {"kafka", "schema-registry", "redis", "prometheus", "grafana", "provision"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft


def _all_settings_fields() -> set[str]:
    import services.inference.settings  # noqa: F401  (registers its Settings subclasses)
    import services.ops.settings  # noqa: F401
    import services.registry.settings  # noqa: F401

    kinds, names = [Settings], set()
    while kinds:
        kind = kinds.pop()
        names |= set(kind.model_fields)
        kinds.extend(kind.__subclasses__())
    return {f"{ENV_PREFIX}{name}".upper() for name in names}


def test_every_streamml_variable_in_compose_is_a_setting():
    fields = _all_settings_fields()
    for name, service in _compose()["services"].items():
        for var in (service.get("environment") or {}):
            if var.startswith(ENV_PREFIX) and not var.startswith(f"{ENV_PREFIX}KAFKA_") or var == "STREAMML_KAFKA_BOOTSTRAP_SERVERS":
                assert var in fields, f"{name} sets {var}, which no setting reads"


def test_every_streamml_command_in_compose_exists():
    _register_subcommands()
    commands = {c.name for c in app.registered_commands} | {c.callback.__name__ for c in app.registered_commands}
    for name, service in _compose()["services"].items():
        command = service.get("command") or []
        if command[:1] == ["streamml"]:
            assert command[1] in commands, f"{name} runs unknown command {command[1]}"
            if command[1] == "run":
                assert command[2] in PROCESSES
