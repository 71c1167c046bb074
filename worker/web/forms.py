"""HTML form bodies of the readers' pages (``application/x-www-form-urlencoded``, the HTML
Living Standard's default form encoding), read with a size cap before anything is parsed."""

from __future__ import annotations

from ipaddress import ip_address
from urllib.parse import parse_qs

from fastapi import Request

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
    """The IP address of the connection's peer (never a header a client can write); None when
    the peer is not an IP (a Unix socket, a test client)."""
    host = request.client.host if request.client else ""
    try:
        return str(ip_address(host))
    except ValueError:
        return None
