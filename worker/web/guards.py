"""What every request and response of the public app goes through: body caps and the security
headers. Both are plain ASGI middleware, so no route can forget them.

Body caps: the routes read the body before any check (a signature covers the raw bytes), so an
unauthenticated 400 MB POST used to sit in memory whole. :class:`BodyLimit` answers ``413`` at
once when ``Content-Length`` is over the route's cap, and otherwise counts the bytes as the route
reads them and stops at the cap (a chunked body has no length to check): nothing over the cap is
ever held. uvicorn's flow control keeps the unread rest in the socket.

Security headers (:class:`SecurityHeaders`): a Content-Security-Policy without any script (none
of our pages has one) and without third-party origins (a reader's browser fetches nothing from
anyone else; an archived edition's remote images are not loaded), ``Referrer-Policy:
no-referrer`` (the token in ``/u/<token>`` never leaves in a Referer), ``X-Content-Type-Options:
nosniff``. Inline ``<style>`` and ``style`` attributes are allowed: the pages and mails have them,
and without script a style cannot run anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "style-src 'unsafe-inline'",
        "img-src 'self' data:",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
)


class BodyLimit:
    """Caps request bodies: ``limits`` are (path prefix, bytes), the first matching prefix wins,
    ``default`` applies elsewhere. Over the cap: ``413 {"detail": "..."}`` naming the cap, or,
    for a path with an entry in ``pages`` (path, ASGI app), that app's answer: a page for a
    person (the desk's upload form), called with the request's scope and no body."""

    def __init__(
        self,
        app: ASGIApp,
        limits: Sequence[tuple[str, int]],
        default: int,
        pages: Sequence[tuple[str, ASGIApp]] = (),
    ) -> None:
        self.app = app
        self.limits = tuple(limits)
        self.default = default
        self.pages = dict(pages)

    def cap(self, path: str) -> int:
        """The cap in bytes for a request to ``path``."""
        return next((n for prefix, n in self.limits if path.startswith(prefix)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.cap(scope["path"])
        detail = f"request body too large: at most {cap} bytes on {scope['path'][:100]}"
        length = _content_length(scope)
        if length is not None and length > cap:
            page = self.pages.get(scope["path"])
            if page is not None:
                await page(scope, _no_body, send)
                return
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    # FastAPI re-raises HTTPException from body reading: the route answers 413.
                    raise HTTPException(413, detail)
            return message

        await self.app(scope, capped, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response (a route's own value wins)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
