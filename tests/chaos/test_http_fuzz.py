"""HTTP fuzzing: schemathesis drives every operation of the inference service and the schema registry with
valid and invalid inputs from their OpenAPI; no answer may be a 5xx, a status the spec does not list, a
content type it does not list, or a body that breaks the documented schema, and invalid input must be
refused (4xx). Then the limits by hand: oversized bodies and batches, malformed JSON, wrong content types.

Both services are real processes on loopback (inference against real Redis, the session broker and
registry); the inference service is fuzzed with its predict fast path on and off (same contract). The specs
are built from the apps' factories at collection, so schemathesis can make one test per operation, and the
fixtures check that the live processes serve exactly those at `/openapi.json`. Generation is derandomized
(the same cases every run); STREAMML_FUZZ_EXAMPLES changes how many per operation (default 50).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from services.inference.app import create_app as create_inference_app
from services.inference.contracts import ErrorResponse
from services.inference.settings import InferenceSettings
from services.registry.app import create_app as create_registry_app
from services.registry.store import SchemaStore
from tests.flowkit import provision
from tests.servers import ServerProcess, free_port, start_redis, wait_for
from tests.servingkit import ADMIN_KEY, Service, serving_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH_MAX = 20
SINGLE_MAX_BYTES, BATCH_MAX_BYTES = 64 * 1024, 4 * 1024 * 1024  # PredictFastPath's limits (README: 413)
REGISTRY_KEY = "fuzz-registry-admin"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]
FUZZ = settings(max_examples=int(os.environ.get("STREAMML_FUZZ_EXAMPLES", "50")), deadline=None,
                derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

INFERENCE_SPEC = create_inference_app(InferenceSettings(inference_auth=False)).app.openapi()
REGISTRY_SPEC = create_registry_app(cast(SchemaStore, None)).openapi()  # the spec never touches the store


def _schema(spec: dict, key: str) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_dict(spec)
    schema.config.update(headers={"X-API-Key": key}, request_timeout=10)
    return schema


inference_api = _schema(INFERENCE_SPEC, ADMIN_KEY)
registry_api = _schema(REGISTRY_SPEC, REGISTRY_KEY)


@pytest.fixture(scope="module")
def own_redis(server_logs: Path) -> Iterator[ServerProcess]:
    server = start_redis(server_logs)
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["fast-path", "fastapi"])
def inference(request: pytest.FixtureRequest, kafka_bootstrap: str, registry_url: str, own_redis: ServerProcess,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    provision(kafka_bootstrap)
    home = tmp_path_factory.mktemp(f"fuzz-inference-{request.param}")
    redis_url = f"redis://127.0.0.1:{own_redis.port}/0"
    env = serving_env(home, kafka_bootstrap, registry_url, redis_url, f"fuzz{uuid.uuid4().hex[:6]}",
                      STREAMML_INFERENCE_BATCH_MAX=str(BATCH_MAX),
                      STREAMML_INFERENCE_FAST_PATH=str(request.param == "fast-path").lower())
    service = Service(env, home).start()
    try:
        assert service.client.get("/openapi.json").json() == INFERENCE_SPEC
        yield service
    finally:
        code = service.stop()
    log = service.log()
    assert "request failed" not in log, log[-3000:]  # the 500 handler's line
    assert "does not fit the PredictionLog schema" not in log, log[-3000:]  # served but never logged
    assert code == 0, log[-3000:]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry of this module's own, with an admin key: fuzzing PUT /config or DELETE /subjects on the
    session registry would change what the other tests see."""
    home = tmp_path_factory.mktemp("fuzz-registry")
    port = free_port()
    env = {**os.environ, "STREAMML_HOME": str(home), "STREAMML_REGISTRY_PORT": str(port),
           "STREAMML_REGISTRY_ADMIN_KEYS": REGISTRY_KEY}
    log_path = home / "registry.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.registry"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": REGISTRY_KEY}, timeout=5) as client:
            wait_for(lambda: client.get("/healthz").status_code == 200, 30, "schema registry")
            assert client.get("/openapi.json").json() == REGISTRY_SPEC
            # one real subject, so reads and lookups have something to find
            schema = json.dumps({"type": "record", "name": "Fuzz", "fields": [{"name": "id", "type": "string"}]})
            assert client.post("/subjects/fuzz-value/versions", json={"schema": schema}).status_code == 200
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
    text = log_path.read_text(errors="replace")
    assert "request failed" not in text, text[-3000:]


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    """One keep-alive session for all generated requests (schemathesis' own would connect per request)."""
    with requests.Session() as session:
        yield session


@inference_api.parametrize()
@FUZZ
def test_inference_api_conforms_to_its_openapi(case: schemathesis.Case, inference: Service,
                                               http: requests.Session) -> None:
    case.call_and_validate(base_url=inference.url, session=http, checks=[*CHECKS, ignored_auth])


@registry_api.parametrize()
@FUZZ
def test_registry_api_conforms_to_its_openapi(case: schemathesis.Case, registry: str,
                                              http: requests.Session) -> None:
    case.call_and_validate(base_url=registry, session=http, checks=CHECKS)


# --- the limits, by hand ----------------------------------------------------------------------------------

def _refused(resp: httpx.Response, status: int) -> ErrorResponse:
    """The documented refusal: this status and an `ErrorResponse` body."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers["content-type"].startswith("application/json")
    return ErrorResponse.model_validate(resp.json())


def _pair(n: int = 0, **context: object) -> dict:
    return {"user_id": f"u{n}", "item_id": f"i{n % 7}", "context": context}


def test_oversized_bodies_are_refused_with_413(inference: Service) -> None:
    single = _refused(inference.client.post("/v1/predict", json=_pair(note="x" * SINGLE_MAX_BYTES)), 413)
    assert str(SINGLE_MAX_BYTES) in single.error
    rows = [_pair(n, note="x" * 1000) for n in range(BATCH_MAX_BYTES // 1000 + 1)]
    batch = _refused(inference.client.post("/v1/predict/batch", json=rows), 413)
    assert str(BATCH_MAX_BYTES) in batch.error

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to refuse by
        yield b'{"user_id": "u1", "item_id": "i1", "context": {"note": "'
        for _ in range(SINGLE_MAX_BYTES // 4096 + 1):
            yield b"x" * 4096
        yield b'"}}'

    _refused(inference.client.post("/v1/predict", content=chunks(),
                                   headers={"Content-Type": "application/json"}), 413)
    # just under the limit is served
    fits = _pair(note="x" * (SINGLE_MAX_BYTES - 200))
    assert len(json.dumps(fits)) < SINGLE_MAX_BYTES
    assert inference.client.post("/v1/predict", json=fits).status_code == 200


def test_a_batch_above_the_limit_is_refused_naming_it(inference: Service) -> None:
    assert inference.client.post("/v1/predict/batch", json=[_pair(n) for n in range(BATCH_MAX)]).status_code == 200
    too_many = inference.client.post("/v1/predict/batch", json=[_pair(n) for n in range(BATCH_MAX + 1)])
    assert too_many.status_code in (413, 422)
    error = _refused(too_many, too_many.status_code).error
    assert f"1 to {BATCH_MAX}" in error and str(BATCH_MAX + 1) in error
    _refused(inference.client.post("/v1/predict/batch", json=[]), 422)


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/predict/batch"])
@pytest.mark.parametrize("body", [
    b'{"user_id": "u1", "item_id": ', b"", b"not json", b'{"user_id": "u1", "item_id": "i1"}}',
    b'{"user_id": "\xff\xfe", "item_id": "i1"}', b"null", b"[[]]", b'"a string"', b"1e999999",
])
def test_malformed_json_is_refused_with_422(inference: Service, path: str, body: bytes) -> None:
    if path.endswith("batch") and body.startswith(b"{"):
        body = b"[" + body + b"]"
    refused = _refused(inference.client.post(path, content=body, headers={"Content-Type": "application/json"}),
                       422)
    assert refused.detail and refused.detail[0].field.startswith("body")


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml", "json"])
def test_a_body_that_is_not_declared_json_is_refused_with_415(inference: Service, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}  # httpx adds none to raw content
    valid = json.dumps(_pair()).encode()
    for path, body in (("/v1/predict", valid), ("/v1/predict/batch", b"[" + valid + b"]")):
        refused = _refused(inference.client.post(path, content=body, headers=headers), 415)
        assert "application/json" in refused.error


def test_json_media_types_with_parameters_are_served(inference: Service) -> None:
    body = json.dumps(_pair()).encode()
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        resp = inference.client.post("/v1/predict", content=body, headers={"Content-Type": content_type})
        assert resp.status_code == 200, resp.text


def test_refusals_order_key_first(inference: Service) -> None:
    """Without a key nothing else about the request is disclosed or read."""
    huge = b"[" + b"x" * (BATCH_MAX_BYTES + 1) + b"]"
    with httpx.Client(base_url=inference.url) as anonymous:
        assert anonymous.post("/v1/predict/batch", content=huge).status_code == 401
        wrong = anonymous.post("/v1/predict", content=b"nope", headers={"X-API-Key": "nope"})
    assert _refused(wrong, 401).error == "unknown API key"
    assert wrong.headers["www-authenticate"] == "X-API-Key"


@pytest.mark.parametrize("body", [
    b'{"user_id": "\\ud800", "item_id": "i1"}',  # a lone surrogate: valid JSON text, no valid string
    b'{"user_id": "u1", "item_id": "i1", "context": {"device": "\\udfff"}}',
    b'{"user_id": "u1", "item_id": "i1", "context": {"position": 100000000000000000000000}}',  # no double holds it
    b'{"user_id": "u1", "item_id": "i1", "context": {"position": true}}',
    b'{"user_id": "u1", "item_id": "i1", "context": {"position": "3"}}',
    b'{"user_id": "u1", "item_id": "i1", "context": {"position": 2.5}}',
])
def test_values_that_could_not_be_keyed_or_logged_are_refused_with_422(inference: Service, body: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    for path, content in (("/v1/predict", body), ("/v1/predict/batch", b"[" + body + b"]")):
        refused = _refused(inference.client.post(path, content=content, headers=headers), 422)
        assert refused.detail and refused.detail[0].field.startswith("body")


def test_model_routes_answer_503_while_the_model_store_is_down(inference: Service, own_redis: ServerProcess) -> None:
    """Redis is stopped, then started again on the same port (with its data) for the tests after this one."""
    own_redis.stop()
    try:
        assert "unavailable" in _refused(inference.client.get("/v1/models"), 503).error
        _refused(inference.admin.post("/v1/models/v000001/activate"), 503)
        served = inference.client.post("/v1/predict", json=_pair())  # predict degrades instead
        assert served.status_code == 200 and "features_unavailable" in served.json()["degraded"]
    finally:
        own_redis.start()
    wait_for(lambda: inference.client.get("/v1/models").status_code == 200, 10, "model store back")


def test_registry_refusals_are_documented_and_confluent_shaped(registry: str) -> None:
    huge = 2**64  # found by the fuzzer: SQLite cannot bind it, so the lookup raised (500)
    with httpx.Client(base_url=registry, headers={"X-API-Key": REGISTRY_KEY}) as client:
        for path in (f"/schemas/ids/{huge}", f"/schemas/ids/{huge}/versions", f"/schemas/ids/{huge}/subjects"):
            resp = client.get(path)
            assert (resp.status_code, resp.json()["error_code"]) == (404, 40403), path
        not_utf8 = client.post("/subjects/fuzz-value/versions", content=b'{"schema": "\xff"}',
                               headers={"Content-Type": "application/json"})
        assert not_utf8.status_code == 400 and set(not_utf8.json()) == {"error_code", "message"}
        assert "400" in REGISTRY_SPEC["paths"]["/subjects/{subject}/versions"]["post"]["responses"]
        keyless = httpx.post(f"{registry}/subjects/fuzz-value/versions", json={"schema": "\"string\""})
        assert (keyless.status_code, keyless.json()["error_code"]) == (401, 40101)
