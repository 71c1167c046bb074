"""``POST /signup``: a website (or a browser posting the form) hands in a signup event."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from worker import json_documents
from worker.subscriptions.signups import (
    AddressRules,
    SignupRefused,
    record_refusal,
    validate_signup,
)
from worker.web.dependencies import RuntimeDep

MAX_SIGNUP_BYTES = 65_536

router = APIRouter()


@router.post("/signup", status_code=202)
async def signup(request: Request, rt: RuntimeDep) -> Response:
    """Enqueue a signup event (the same JSON as the queue message, docs/signup-event.md).

    202 with the same body whatever the address's state (no enumeration: the database is
    not even read here); 400 with the reason for an event the schema or the address check
    refuses, which is also recorded. Without ``ip``/``user_agent`` in the event, the
    request's own are recorded (a browser posting the form directly).
    """
    from worker.actors import handle_signup

    raw = await request.body()
    try:
        data = signup_json(raw)
        if isinstance(data, dict):
            data = with_request_evidence(data, request)
        rules = AddressRules.from_settings(rt.settings)
        # In a thread: the address check may ask DNS for MX records (blocking).
        valid = await run_in_threadpool(validate_signup, data, rules, rt.signup_languages())
    except SignupRefused as refusal:
        with rt.session() as session:
            payload = raw[:8192].decode("utf-8", "replace")
            record_refusal(session, refusal, payload, rt.clock.now())
        body = {"status": "refused", "reason": refusal.reason, "detail": refusal.detail}
        return JSONResponse(body, 400)
    handle_signup.send(valid.event.model_dump(mode="json", exclude_none=True))
    return JSONResponse({"status": "accepted"}, status_code=202)


def signup_json(raw: bytes) -> Any:
    """The decoded body of ``POST /signup``; raises ``SignupRefused`` (``malformed``)."""
    if len(raw) > MAX_SIGNUP_BYTES:
        raise SignupRefused("malformed", f"body: longer than {MAX_SIGNUP_BYTES} bytes")
    try:
        return json_documents.loads(raw)  # bounded nesting: RecursionError was a 500
    except ValueError as exc:
        raise SignupRefused("malformed", f"body: not JSON ({exc})") from None


def with_request_evidence(data: dict[str, Any], request: Request) -> dict[str, Any]:
    """The event with the request's IP and User-Agent where the event has none."""
    filled = dict(data)
    if "ip" not in filled and request.client is not None and _is_ip(request.client.host):
        filled["ip"] = request.client.host
    agent = request.headers.get("user-agent")
    if "user_agent" not in filled and agent:
        filled["user_agent"] = agent[:512]
    return filled


def _is_ip(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True
