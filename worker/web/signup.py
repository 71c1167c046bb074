"""``POST /signup``: a website (or a browser posting the form) hands in a signup event."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from worker.safety import json_documents
from worker.subscriptions.signups import (
    AddressRules,
    SignupRefused,
    record_refusal,
    validate_signup,
)
from worker.web.callers import (
    SIGNATURE_HEADER,
    BadSignature,
    client_ip,
    signup_keys,
    trusted_networks,
    verify_signature,
)
from worker.web.dependencies import RuntimeDep

MAX_SIGNUP_BYTES = 65_536

router = APIRouter()


@router.post("/signup", status_code=202)
async def signup(request: Request, rt: RuntimeDep) -> Response:
    """Enqueue a signup event (the same JSON as the queue message, docs/signup-event.md).

    Only ``Content-Type: application/json`` (415 otherwise): a cross-origin page can post
    ``text/plain`` or a form without a CORS preflight, never JSON. 202 with the same body
    whatever the address's state (no enumeration: the database is not even read here); 400 with
    the reason (and for an address, the ``code`` of the broken rule) for an event the schema or
    the address check refuses, which is also recorded (within the record limits). The event's
    ``ip``, ``user_agent`` and ``occurred_at`` are believed only from the website, which signs
    the body (``X-Newsletter-Signature``, 401 if the signature is wrong); from anyone else they
    are replaced by the client's address (``callers.client_ip``), its User-Agent and no time.
    """
    from worker.actors import handle_signup

    if not _is_json(request.headers.get("content-type", "")):
        body = {"status": "refused", "reason": "unsupported_media_type",
                "detail": "Content-Type must be application/json"}  # fmt: skip
        return JSONResponse(body, 415)
    raw = await request.body()
    client = client_ip(request, trusted_networks(rt.settings.trusted_proxies))
    header = request.headers.get(SIGNATURE_HEADER)
    if header is not None:
        try:
            keys = signup_keys(rt.settings.signup_key)
            verify_signature(header, raw, keys, rt.clock.now().timestamp())
        except BadSignature as exc:
            return JSONResponse({"status": "refused", "reason": "bad_signature",
                                 "detail": str(exc)}, 401)  # fmt: skip
    try:
        data = signup_json(raw)
        if isinstance(data, dict) and header is None:
            data = with_request_evidence(data, request, client)
        rules = AddressRules.from_settings(rt.settings)
        # In a thread: the address check may ask DNS for MX records (blocking).
        valid = await run_in_threadpool(validate_signup, data, rules, rt.signup_languages())
        # No address to limit by (a Unix socket, no proxy): one shared per-IP window here, as
        # the actor limits only events that carry an ip.
        unknown = header is None and client is None
        if unknown and not rt.limiter.allow_signup("unknown-peer").allowed:
            detail = "too many signups from peers without an address this hour"
            raise SignupRefused("ip_limit", detail, valid.event.event_id)
    except SignupRefused as refusal:
        with rt.session() as session:
            record_refusal(session, refusal, raw, rt.clock.now(), limiter=rt.limiter, source=client)
        body = {"status": "refused", "reason": refusal.reason, "detail": refusal.detail}
        if refusal.code:
            body["code"] = refusal.code
        return JSONResponse(body, 429 if refusal.reason == "ip_limit" else 400)
    handle_signup.send(valid.event.model_dump(mode="json", exclude_none=True))
    return JSONResponse({"status": "accepted"}, status_code=202)


def _is_json(content_type: str) -> bool:
    """``application/json``, with parameters or not (RFC 8259 §11 defines no charset, some
    clients send one)."""
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def signup_json(raw: bytes) -> Any:
    """The decoded body of ``POST /signup``; raises ``SignupRefused`` (``malformed``)."""
    if len(raw) > MAX_SIGNUP_BYTES:
        raise SignupRefused("malformed", f"body: longer than {MAX_SIGNUP_BYTES} bytes")
    try:
        return json_documents.loads(raw)  # bounded nesting: RecursionError was a 500
    except ValueError as exc:
        raise SignupRefused("malformed", f"body: not JSON ({exc})") from None


EVIDENCE_FIELDS = ("ip", "user_agent", "occurred_at")
"""The fields that are the website's word about the signup: consent evidence and the key of the
per-IP limit."""


def with_request_evidence(
    data: dict[str, Any], request: Request, client: str | None
) -> dict[str, Any]:
    """An unsigned caller's event: its own ``ip``, ``user_agent`` and ``occurred_at`` are dropped
    (whatever they say, even null) and the request's address ``client`` and User-Agent used."""
    filled = {name: value for name, value in data.items() if name not in EVIDENCE_FIELDS}
    if client is not None:
        filled["ip"] = client
    agent = request.headers.get("user-agent")
    if agent:
        filled["user_agent"] = agent[:512]
    return filled
