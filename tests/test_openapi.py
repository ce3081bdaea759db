"""The published OpenAPI document describes the API as it answers: errors as the Problem
schema, the API key as a bearer scheme, and the Idempotency-Key the send routes require."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import Tenant, auth

SEND = "/v1/sub-accounts/{sa}/messages"
REPLY = "/v1/sub-accounts/{sa}/conversations/{conversation_id}/messages"


@pytest.fixture
async def spec(api: httpx.AsyncClient) -> dict[str, Any]:
    r = await api.get("/openapi.json")
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def _validator(spec: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """Validates against the published Problem schema, its `$ref`s resolved in the document."""
    schema = {"$ref": "#/components/schemas/Problem", **{"components": spec["components"]}}
    return jsonschema.Draft202012Validator(schema)


def _error_schema(spec: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    content = spec["paths"][path][method]["responses"][str(status)]["content"]
    assert list(content) == ["application/problem+json"]
    schema: dict[str, Any] = content["application/problem+json"]["schema"]
    return schema


async def test_every_documented_error_is_a_problem(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in str(spec) and "ValidationError" not in spec[
        "components"]["schemas"]
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}
    errors = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status in operation["responses"]:
                if int(status) >= 400:
                    errors += 1
                    assert _error_schema(spec, path, method, int(status)) == {
                        "$ref": "#/components/schemas/Problem"}, (path, method, status)
    assert errors > 100
    sending = spec["paths"][SEND]["post"]["responses"]
    assert {"401", "403", "404", "409", "413", "422", "503"} <= set(sending)
    assert "Retry-After" in sending["503"]["headers"]
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
    assert not any(int(s) >= 400 for s in spec["paths"]["/healthz"]["get"]["responses"])


async def test_errors_the_api_answers_validate_against_the_published_problem(
    api: httpx.AsyncClient, tenant: Tenant, spec: dict[str, Any]
) -> None:
    validator = _validator(spec)
    sa = tenant.sa1
    answers = [
        # 422 from FastAPI's own validation, a body field and a path parameter
        await api.post(f"/v1/sub-accounts/{sa}/contacts", headers=auth(tenant.sa1_key),
                       json={"phone": "not a phone", "extra": 1}),
        await api.get("/v1/sub-accounts/not-a-uuid/contacts", headers=auth(tenant.sa1_key)),
        # 422 from the handler: the missing Idempotency-Key
        await api.post(f"/v1/sub-accounts/{sa}/messages", headers=auth(tenant.sa1_key),
                       json={"channel": "sms", "to": "+12125550100", "body": "hi"}),
        await api.get(f"/v1/sub-accounts/{sa}/contacts"),  # 401
        # 404: another sub-account's resources are not found
        await api.get(f"/v1/sub-accounts/{tenant.sa2}/contacts", headers=auth(tenant.sa1_key)),
        # 413
        await api.post(f"/v1/sub-accounts/{sa}/contacts", headers=auth(tenant.sa1_key),
                       content=b"{" + b" " * 2_000_000 + b"}"),
    ]
    assert [r.status_code for r in answers] == [422, 422, 422, 401, 404, 413]
    for r in answers:
        assert r.headers["content-type"].startswith("application/problem+json")
        validator.validate(r.json())
    assert "Idempotency-Key" in [e["field"] for e in answers[2].json()["errors"]]
    # The validator is not one that accepts anything: FastAPI's own shape is refused.
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"detail": [{"loc": ["body", "to"], "msg": "x", "type": "y"}]})


async def test_security_schemes_mark_how_each_route_authenticates(
    spec: dict[str, Any]
) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "http", "scheme": "bearer"}
    assert spec["security"] == [{"apiKey": []}]
    paths = spec["paths"]
    assert "security" not in paths[SEND]["post"]  # the API key, the default
    assert "security" not in paths["/v1/realtime/tickets"]["post"]
    for public in (paths["/healthz"]["get"], paths["/readyz"]["get"],
                   paths["/v1/unsubscribe/{message_id}"]["post"]):
        assert public["security"] == []
    assert paths["/v1/providers/twilio/sms/status"]["post"]["security"] == [
        {"twilioSignature": []}]
    assert paths["/v1/providers/sendgrid/events"]["post"]["security"] == [
        {"sendgridSignature": []}]
    assert schemes["twilioSignature"]["name"] == "X-Twilio-Signature"


async def test_idempotency_key_is_required_only_where_the_api_requires_it(
    spec: dict[str, Any]
) -> None:
    def key(path: str) -> dict[str, Any]:
        params = spec["paths"][path]["post"]["parameters"]
        found: dict[str, Any] = next(p for p in params if p["name"] == "Idempotency-Key")
        return found

    assert key(SEND)["required"] is True and key(REPLY)["required"] is True
    assert key("/v1/sub-accounts/{sa}/contacts").get("required", False) is False


async def test_docs_pages_are_served_without_a_cdn(api: httpx.AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        html = (await api.get(page)).text
        assert "cdn.jsdelivr.net" not in html and "/docs/static/" in html
    css = await api.get("/docs/static/swagger-ui.css")
    js = await api.get("/docs/static/swagger-ui-bundle.js")
    assert css.status_code == 200 and js.status_code == 200 and "SwaggerUIBundle" in js.text
