"""The registry's SQLite store: ids, versions, deletes and compatibility config, on a temp dir."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.errors import IncompatibleSchemaError, SchemaError
from schemas.topics import CLICKSTREAM, LABELS
from services.registry.errors import RegistryRequestError
from services.registry.store import SchemaStore, canonical_form


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SchemaStore]:
    db = SchemaStore(tmp_path / "registry" / "registry.db")
    yield db
    db.close()


def v1() -> dict[str, Any]:
    return {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}


def v2() -> dict[str, Any]:
    schema = v1()
    schema["fields"].append({"name": "b", "type": "string", "default": ""})
    return schema


def with_required(name: str) -> dict[str, Any]:
    schema = v1()
    schema["fields"].append({"name": name, "type": "double"})
    return schema


def error_code(exc: pytest.ExceptionInfo[RegistryRequestError]) -> int:
    return exc.value.error_code


def test_ids_increase_and_versions_count_per_subject(store: SchemaStore):
    first, created = store.register("s-value", v1())
    second, _ = store.register("s-value", v2())
    other, _ = store.register("t-value", LABELS.schema)
    assert created and (first.version, second.version, other.version) == (1, 2, 1)
    assert first.schema_id < second.schema_id < other.schema_id
    assert store.versions("s-value") == [1, 2]
    assert store.subjects() == ["s-value", "t-value"]


def test_same_schema_again_returns_the_existing_version_whatever_its_formatting(store: SchemaStore):
    first, _ = store.register("s-value", v1())
    spaced = json.dumps(v1(), indent=4)
    reordered = json.dumps(dict(reversed(list(v1().items()))))
    for text in (spaced, reordered):
        again, created = store.register("s-value", text)
        assert (again.schema_id, again.version, created) == (first.schema_id, 1, False)
    assert store.versions("s-value") == [1]
    assert canonical_form(spaced) == canonical_form(reordered)


def test_same_schema_under_another_subject_reuses_the_global_id(store: SchemaStore):
    a, _ = store.register("a-value", CLICKSTREAM.schema_str)
    b, _ = store.register("b-value", CLICKSTREAM.schema)
    assert a.schema_id == b.schema_id and b.version == 1
    assert store.versions_of_id(a.schema_id) == [("a-value", 1), ("b-value", 1)]


def test_incompatible_schema_is_refused_naming_the_field_and_not_stored(store: SchemaStore):
    store.register("s-value", v1())
    with pytest.raises(IncompatibleSchemaError, match=r"R\.discount: field added without a default"):
        store.register("s-value", with_required("discount"))
    assert store.versions("s-value") == [1]


def test_invalid_schema_raises_schema_error(store: SchemaStore):
    with pytest.raises(SchemaError, match="unknown type 'Nope'|Nope"):
        store.register("s-value", {"type": "record", "name": "R", "fields": [{"name": "x", "type": "Nope"}]})
    assert store.subjects() == []


def test_lookup_finds_the_version_or_says_what_is_missing(store: SchemaStore):
    store.register("s-value", v1())
    store.register("s-value", v2())
    assert store.lookup("s-value", json.dumps(v2(), indent=2)).version == 2
    with pytest.raises(RegistryRequestError) as missing_schema:
        store.lookup("s-value", with_required("x"))
    with pytest.raises(RegistryRequestError) as missing_subject:
        store.lookup("nope", v1())
    assert (error_code(missing_schema), error_code(missing_subject)) == (40403, 40401)


def test_get_version_by_number_and_latest(store: SchemaStore):
    first, _ = store.register("s-value", v1())
    second, _ = store.register("s-value", v2())
    assert store.get_version("s-value", 1) == first
    assert store.get_version("s-value", "latest") == second
    assert json.loads(store.schema_by_id(second.schema_id)) == v2()
    with pytest.raises(RegistryRequestError) as missing:
        store.get_version("s-value", 3)
    assert error_code(missing) == 40402


def test_soft_delete_hides_versions_but_keeps_ids_readable(store: SchemaStore):
    first, _ = store.register("s-value", v1())
    store.register("s-value", v2())
    assert store.delete_version("s-value", 2) == 2
    assert store.versions("s-value") == [1]
    assert store.versions("s-value", include_deleted=True) == [1, 2]
    assert store.get_version("s-value", "latest").version == 1
    assert store.delete_subject("s-value") == [1]
    assert store.subjects() == [] and store.subjects(include_deleted=True) == ["s-value"]
    assert store.subjects(deleted_only=True) == ["s-value"]
    assert json.loads(store.schema_by_id(first.schema_id)) == v1()  # old records still decode
    with pytest.raises(RegistryRequestError) as again:
        store.delete_subject("s-value")
    assert error_code(again) == 40404


def test_permanent_delete_needs_a_soft_delete_first_then_erases(store: SchemaStore):
    first, _ = store.register("s-value", v1())
    with pytest.raises(RegistryRequestError) as not_soft:
        store.delete_subject("s-value", permanent=True)
    assert error_code(not_soft) == 40405
    store.delete_subject("s-value")
    assert store.delete_subject("s-value", permanent=True) == [1]
    assert store.subjects(include_deleted=True) == []
    with pytest.raises(RegistryRequestError) as gone:
        store.schema_by_id(first.schema_id)
    assert error_code(gone) == 40403


def test_permanent_version_delete_follows_the_same_rule(store: SchemaStore):
    store.register("s-value", v1())
    store.register("s-value", v2())
    with pytest.raises(RegistryRequestError) as not_soft:
        store.delete_version("s-value", 2, permanent=True)
    assert error_code(not_soft) == 40407
    store.delete_version("s-value", 2)
    with pytest.raises(RegistryRequestError) as soft_again:
        store.delete_version("s-value", 2)
    assert error_code(soft_again) == 40406
    assert store.delete_version("s-value", 2, permanent=True) == 2
    assert store.versions("s-value", include_deleted=True) == [1]


def test_deleted_versions_do_not_constrain_new_ones(store: SchemaStore):
    store.register("s-value", v1())
    store.delete_subject("s-value")
    replacement, created = store.register("s-value", with_required("c"))
    assert created and replacement.version == 2  # version numbers are not reused after a soft delete


def test_reregistering_a_schema_after_permanent_delete_keeps_its_id(store: SchemaStore):
    first, _ = store.register("s-value", v1())
    store.delete_subject("s-value")
    store.delete_subject("s-value", permanent=True)
    again, _ = store.register("s-value", v1())
    assert (again.schema_id, again.version) == (first.schema_id, 1)


def test_compatibility_defaults_to_backward_and_subject_level_overrides_global(store: SchemaStore):
    assert store.compatibility() == "BACKWARD" and store.compatibility("s-value") == "BACKWARD"
    assert store.set_compatibility("full", None) == "FULL"
    assert store.compatibility("s-value") == "FULL"
    store.set_compatibility("NONE", "s-value")
    assert (store.compatibility("s-value"), store.subject_compatibility("s-value")) == ("NONE", "NONE")
    store.register("s-value", v1())
    store.register("s-value", with_required("c"))  # NONE: accepted
    assert store.delete_compatibility("s-value") == "NONE"
    assert store.compatibility("s-value") == "FULL" and store.subject_compatibility("s-value") is None
    assert store.delete_compatibility() == "FULL" and store.compatibility() == "BACKWARD"
    with pytest.raises(RegistryRequestError) as bad:
        store.set_compatibility("SIDEWAYS")
    assert error_code(bad) == 42203


def test_transitive_level_checks_every_live_version(store: SchemaStore):
    def schema(*fields: dict[str, Any]) -> dict[str, Any]:
        return {"type": "record", "name": "R", "fields": list(fields)}

    b = {"name": "b", "type": "string", "default": ""}
    store.set_compatibility("BACKWARD_TRANSITIVE", "s-value")
    store.register("s-value", schema({"name": "a", "type": "int"}))
    store.register("s-value", schema(b))  # `a` dropped: fine
    a_as_string = schema({"name": "a", "type": "string", "default": ""}, b)  # reads v2, not v1's int `a`
    with pytest.raises(IncompatibleSchemaError, match="R.a: type changed from int to string"):
        store.register("s-value", a_as_string)
    store.set_compatibility("BACKWARD", "s-value")
    assert store.register("s-value", a_as_string)[0].version == 3


def test_check_compatibility_against_one_version_or_the_level(store: SchemaStore):
    assert store.check_compatibility("new-subject", v1()) == []
    store.register("s-value", v1())
    assert store.check_compatibility("s-value", v2()) == []
    assert store.check_compatibility("s-value", with_required("x"), "latest") == ["R.x: field added without a default"]
    with pytest.raises(RegistryRequestError) as missing:
        store.check_compatibility("s-value", v2(), 7)
    assert error_code(missing) == 40402


def test_state_survives_reopening_the_database(tmp_path: Path):
    path = tmp_path / "registry.db"
    first = SchemaStore(path)
    registered, _ = first.register("s-value", CLICKSTREAM.schema)
    first.set_compatibility("FULL", "s-value")
    first.close()
    reopened = SchemaStore(path)
    try:
        assert reopened.get_version("s-value", "latest") == registered
        assert reopened.compatibility("s-value") == "FULL"
        following, _ = reopened.register("t-value", v1())
        assert following.schema_id > registered.schema_id
    finally:
        reopened.close()


def test_concurrent_registrations_of_one_schema_get_one_id_and_one_version(store: SchemaStore):
    ids: list[int] = []

    def register() -> None:
        ids.append(store.register("s-value", CLICKSTREAM.schema)[0].schema_id)

    threads = [threading.Thread(target=register) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1 and store.versions("s-value") == [1]
