"""What the readers' form pages (preferences, the hosted signup page) share: their form bodies
(``application/x-www-form-urlencoded``, the HTML Living Standard's default form encoding), read
with a size cap before anything is parsed, and the response headers that keep them private."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from ipaddress import ip_address
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request, Response
from fastapi.routing import APIRoute

from worker.web.callers import client_ip, trusted_networks
from worker.web.dependencies import app_runtime

MAX_FORM_BYTES = 8192  # an address, a language and a token fit many times over


class FormTooLarge(ValueError):
    """The body is longer than :data:`MAX_FORM_BYTES` (answer 413)."""


async def read_form(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    """The form fields of ``request`` (the first value of each name; bytes that are not UTF-8
    become U+FFFD). Reads at most ``limit`` bytes: raises :class:`FormTooLarge` beyond, so a
    huge body never sits in memory."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise FormTooLarge(f"form body longer than {limit} bytes")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def peer_ip(request: Request) -> str | None:
    """The reader's IP address: the connection's peer, or behind a proxy listed in
    ``NEWSLETTER_TRUSTED_PROXIES`` the hop it names (``worker.web.callers.client_ip``; never a
    header an untrusted client writes); None when the peer is not an IP (a Unix socket)."""
    trusted = trusted_networks(app_runtime(request).settings.trusted_proxies)
    found = client_ip(request, trusted)
    try:
        return str(ip_address(found)) if found else None
    except ValueError:
        return None


READER_PAGE_HEADERS = {
    # The preferences URL holds the reader's token: never send it to another site in Referer.
    "Referrer-Policy": "no-referrer",
    # No script, no remote anything, forms post only here, and no framing (clickjacking an
    # unsubscribe button). CSP Level 3 (W3C); inline <style> is the pages' only style.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


class ReaderPageRoute(APIRoute):
    """A route whose every response (pages, refusals, errors) carries
    :data:`READER_PAGE_HEADERS`; use as ``APIRouter(route_class=ReaderPageRoute)``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            response = await handle(request)
            response.headers.update(READER_PAGE_HEADERS)
            return response

        return guarded
