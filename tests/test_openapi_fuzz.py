"""schemathesis against the web app's own OpenAPI schema: no generated request gets a 5xx.

The app (``worker.web.app:create_app``) is called in process through ASGI. Its schema is the one
FastAPI builds, with the two bodies the handlers read raw made explicit so that schemathesis
generates them too: the signup event (its JSON Schema from
``worker.subscriptions.signups.SignupEvent``) and
the RFC 8058 one-click form, and the webhooks' JSON. Both positive (schema-valid) and negative
(schema-violating) cases
are generated; every answer must be below 500. The dashboard is called with the operator's
credentials half of the time, so its query parameters are reached as well; the webhook routes
are configured (secrets set) and get arbitrary JSON, so the verification code is reached.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.samples import SAMPLE_EDITION
from tests.services import DATA_KEY_ENV
from worker import actors
from worker.db import dispose_engines
from worker.editions.files import read_edition
from worker.editions.store import save_edition
from worker.runtime import Runtime
from worker.settings import Settings
from worker.subscriptions.signups import SignupEvent
from worker.web.app import create_app

OPERATOR = ("operator", "openapi-fuzz-password")
SG_KEY = (  # SendGrid's published test key (tests/test_webhooks.py)
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcw"
    "HBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA=="
)


def _with_raw_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """The app's schema plus the request bodies its handlers read without FastAPI models."""
    event = SignupEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    document.setdefault("components", {}).setdefault("schemas", {}).update(event.pop("$defs", {}))
    document["components"]["schemas"]["SignupEvent"] = event
    paths = document["paths"]
    paths["/signup"]["post"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SignupEvent"}}},
    }
    paths["/u/{token}"]["post"]["requestBody"] = {
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {"List-Unsubscribe": {"type": "string", "enum": ["One-Click"]}},
                }
            }
        },
    }
    for provider in ("ses", "postmark", "sendgrid", "mailgun"):
        route = paths.get(f"/webhooks/{provider}", {}).get("post")
        if route is not None:  # any JSON: the signature check comes first
            route["requestBody"] = {"content": {"application/json": {"schema": {}}}}
    return document


@pytest.fixture
def web_schema(sqlite_url: str, tmp_path: Path) -> Iterator[Any]:
    settings = Settings.from_env(
        DATA_KEY_ENV,
        database_url=sqlite_url,
        redis_url="",
        broker="stub",
        smtp_url="smtp://127.0.0.1:1",
        secret_key="openapi-fuzz-secret-0123456789",
        public_url="http://testserver",
        newsletter_path=str(SAMPLE_EDITION / "newsletter.yaml"),
        operator_password=OPERATOR[1],
        api_docs=True,  # the schema is served only when enabled
        operator_login_failures_per_peer=0,  # generated wrong passwords must not lock the run out
        operator_login_failures_total=0,
        postmark_webhook_credentials="user:webhook-secret",
        mailgun_signing_key="key-webhook-secret",
        sendgrid_verification_key=SG_KEY,
        ses_topic_arns="arn:aws:sns:eu-west-1:123456789012:bounces",
    )
    rt = Runtime(replace(settings))
    actors.use_runtime(rt)
    with rt.session() as session:
        save_edition(session, read_edition(SAMPLE_EDITION), rt.clock.now())
    app = create_app(rt)
    app.openapi_schema = _with_raw_bodies(app.openapi())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(allow_x00=True)
    yield schema
    from worker.broker import current

    broker = current()
    broker.flush_all()  # the signups the endpoint enqueued: nobody processes them here
    actors.use_runtime(None)
    dispose_engines()


CASES_PER_MODE = 30  # per operation and generation mode


def test_no_generated_request_gets_a_server_error(web_schema: Any) -> None:
    """Every operation, positive and negative cases; the figures are printed (-s)."""
    seen: dict[str, int] = {}
    operations = [result.ok() for result in web_schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/signup",
        "/confirm/{token}",
        "/u/{token}",
        "/dashboard",
    }
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                strategy = operation.as_strategy(generation_mode=mode)
            except Exception:
                continue

            @hypothesis_settings(
                max_examples=CASES_PER_MODE,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                if case.path == "/dashboard" and len(seen) % 2 == 0:
                    token = base64.b64encode(f"{OPERATOR[0]}:{OPERATOR[1]}".encode()).decode()
                    case.headers = {**(case.headers or {}), "Authorization": f"Basic {token}"}
                response = case.call()
                key = f"{case.method} {case.path}"
                seen[key] = seen.get(key, 0) + 1
                assert response.status_code < 500, (
                    case.method,
                    case.formatted_path,
                    case.body,
                    response.text[:500],
                )

            try:
                run()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # nothing to violate (no parameters)
    print(f"\nschemathesis requests per operation: {seen} (total {sum(seen.values())})")
    assert sum(seen.values()) >= 400
