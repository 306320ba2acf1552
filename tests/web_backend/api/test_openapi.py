"""The OpenAPI document says what a client will meet: names, bodies, images, refusals."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fastapi import FastAPI

OPERATION_ID = re.compile(r"^[a-z]+-[a-z]+(-[a-z]+)*$")


@pytest.fixture
def document(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, methods in document["paths"].items()
            for method, op in methods.items()]


def test_operation_ids_are_tag_then_name(document: dict[str, Any]) -> None:
    ids = {op["operationId"]: (method, path) for method, path, op in _operations(document)}
    assert all(OPERATION_ID.match(i) for i in ids), sorted(ids)
    assert ids["jobs-submit"] == ("post", "/v1/jobs")
    assert ids["auth-token"] == ("post", "/v1/auth/token")
    assert ids["samples-get"] == ("get", "/v1/sample.png")
    for method, path, op in _operations(document):
        assert op["operationId"].startswith(op["tags"][0] + "-"), (method, path)
        assert op["summary"] and not op["summary"].endswith("."), (method, path)


def test_every_reference_resolves_and_models_have_plain_names(
        document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs <= set(schemas), refs - set(schemas)
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", name) for name in schemas), sorted(schemas)


def test_job_submission_is_a_typed_json_body_or_a_form(document: dict[str, Any]) -> None:
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]
    assert body["required"] is True
    content = body["content"]
    assert content["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobRequest"}
    assert content["multipart/form-data"]["schema"] == {
        "$ref": "#/components/schemas/JobSubmissionForm"}
    request = document["components"]["schemas"]["JobRequest"]
    prompts = request["properties"]["prompts"]["anyOf"][0]
    assert prompts["items"] == {"$ref": "#/components/schemas/WeightedPrompt"}
    image = request["properties"]["image_prompt"]["anyOf"][0]
    assert image["contentEncoding"] == "base64"  # JSON carries base64 text, not raw bytes
    events = request["properties"]["webhook_events"]["items"]
    assert events["enum"] == ["completed", "failed", "cancelled"]


def test_images_are_binary_responses(document: dict[str, Any]) -> None:
    for path in ("/v1/jobs/{job_id}/image", "/v1/jobs/{job_id}/preview", "/v1/sample.png"):
        ok = document["paths"][path]["get"]["responses"]["200"]["content"]
        assert ok == {"image/png": {"schema": {"type": "string", "format": "binary"}}}, path


def test_every_refusal_has_the_detail_body_and_its_headers(document: dict[str, Any]) -> None:
    own_bodies = {("/healthz", "503"), ("/readyz", "503")}  # status bodies, not refusals
    for _, path, op in _operations(document):
        responses = op["responses"]
        assert "503" in responses, path  # the database or the process may be busy
        for status, response in responses.items():
            if int(status) < 400 or (path, status) in own_bodies:
                continue
            schema = response["content"]["application/json"]["schema"]
            body = "OpenAIError" if path.startswith("/openai/") else "Detail"  # their shape
            assert schema == {"$ref": f"#/components/schemas/{body}"}, (path, status)
            headers = response.get("headers", {})
            if status in ("429", "503", "504"):
                assert "Retry-After" in headers, (path, status)
            if status == "401":
                assert "WWW-Authenticate" in headers, path
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_signed_in_routes_declare_401_and_bodies_declare_413(document: dict[str, Any]) -> None:
    for _, path, op in _operations(document):
        if op.get("security") and not path.endswith(("/image", "/preview", "/events")):
            assert "401" in op["responses"], path
        if "requestBody" in op:
            assert {"400", "408", "413", "422"} <= set(op["responses"]), path
            body = next(iter(op["requestBody"]["content"].values()))["schema"]
            name = body["$ref"].rsplit("/", 1)[-1]
            assert document["components"]["schemas"][name].get("examples"), \
                f"{path}: {name} has no example"


def test_refusals_match_what_the_server_sends(client: Any) -> None:
    """The declared shape is the real one: a 422 from validation and a 401 say ``detail``;
    under /openai they say ``error`` as OpenAI does."""
    invalid = client.post("/v1/users", json={"username": "x"})
    assert invalid.status_code == 422
    assert {"loc", "msg", "type"} == set(invalid.json()["detail"][0])
    anonymous = client.get("/v1/users/me")
    assert anonymous.status_code == 401 and isinstance(anonymous.json()["detail"], str)
    openai = client.post("/openai/v1/images/generations", json={"prompt": "x"})
    assert openai.status_code == 401
    assert set(openai.json()["error"]) == {"message", "type", "param", "code"}
