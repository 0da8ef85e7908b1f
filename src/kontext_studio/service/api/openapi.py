"""The published OpenAPI schema says what every operation really answers.

FastAPI documents each route's success code and a 422 ``HTTPValidationError`` in ``application/json``, but
this service answers every error (4xx) as ``application/problem+json`` with a stable ``code`` (see
``problems.py``), and some routes have a second success code (an idempotent replay answers 200 where a
create answers 201). Clients generated from the schema, and the schema-driven fuzz test, must see the real
contract, so the schema is completed here once, when first requested.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details with this service's stable error code.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "description": "URL naming the problem kind"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "what went wrong and how to fix it, in words"},
        "code": {"type": "string", "description": "stable machine-readable code, e.g. insufficient_credits"},
        "field": {"type": ["string", "null"], "description": "the request field at fault, if any"},
        "retry_after": {"type": "integer", "description": "seconds to wait (429)"},
    },
}

_PROBLEM_RESPONSE: dict[str, Any] = {
    "description": "Client error (401 no or bad key, 402 insufficient credits, 404 not found or not yours, "
                   "409 conflict, 413 too large, 415 unsupported image type, 422 invalid input, 429 rate "
                   "limited), as problem details.",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def complete_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Add problem responses to every operation and a 200 beside each 201 (idempotent replays).

    Args:
        schema: an OpenAPI document as FastAPI generates it (changed in place).

    Returns:
        The same document.
    """
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            responses.pop("422", None)  # FastAPI's HTTPValidationError: answered as a problem instead
            responses["4XX"] = _PROBLEM_RESPONSE
            if "201" in responses and "200" not in responses:
                responses["200"] = {**responses["201"], "description": "Already created: the same request "
                                                                       "(Idempotency-Key or id) answered again"}
    schemas = schema["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return schema


def publish_complete_schema(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) return the completed schema."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_schema(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
