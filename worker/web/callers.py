"""Who is calling: the client's address behind trusted proxies, and the website's signature.

A request's ``ip``, user agent and time of a signup are evidence of consent and the key of the
per-IP limit, so they are believed only from a caller that proves it is the website (an HMAC of
the body under ``NEWSLETTER_SIGNUP_KEY``, docs/signup-event.md). From anyone else the peer
address counts, and ``X-Forwarded-For`` only as far as the hops are configured trusted proxies
(``NEWSLETTER_TRUSTED_PROXIES``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from functools import cache
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from starlette.requests import Request

SIGNATURE_HEADER = "X-Newsletter-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300
"""A signature older or newer than this is refused: a captured request cannot be replayed later
(within the window, the event id makes a replay a no-op)."""

Network = IPv4Network | IPv6Network


class BadSignature(ValueError):
    """A signature header that does not prove the website; the message says what is wrong."""


@cache
def trusted_networks(spec: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, ::1"`` -> the networks; raises ``ValueError`` naming a bad entry."""
    networks = []
    for part in spec.split(","):
        if part.strip():
            try:
                networks.append(ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"NEWSLETTER_TRUSTED_PROXIES: {part.strip()!r} is not an IP network"
                ) from None
    return tuple(networks)


def client_ip(request: Request, trusted: Sequence[Network]) -> str | None:
    """The address of the client: the peer, or, when the peer is a trusted proxy, the rightmost
    ``X-Forwarded-For`` hop that is not a trusted proxy (hops to its left are whatever the client
    wrote). None when the peer is not an IP address (e.g. a Unix socket without a proxy).
    """
    peer = request.client.host if request.client is not None else ""
    hops = [peer]
    if _is_trusted(peer, trusted):
        forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()] + hops
    last_valid: str | None = None
    for hop in reversed(hops):
        try:
            address = str(ip_address(hop))
        except ValueError:
            return last_valid  # a malformed hop: nothing to its left can be believed
        if not _is_trusted(address, trusted):
            return address
        last_valid = address
    return last_valid  # every hop is a trusted proxy: the leftmost is the client


def _is_trusted(host: str, trusted: Sequence[Network]) -> bool:
    try:
        address = ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def signature(key: str, timestamp: int, body: bytes) -> str:
    """The header value a website sends: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of
    "<t>." + body under key>`` (the scheme Stripe's webhooks use, RFC 2104 HMAC)."""
    return f"t={timestamp},v1={_mac(key, timestamp, body)}"


def _mac(key: str, timestamp: int, body: bytes) -> str:
    return hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(header: str, body: bytes, keys: Sequence[str], now: float) -> None:
    """Check a ``X-Newsletter-Signature`` header against any of ``keys`` (rotation), in constant
    time per key. Raises ``BadSignature`` saying what is wrong."""
    if not keys:
        raise BadSignature("signed request, but NEWSLETTER_SIGNUP_KEY is not set on this server")
    fields = dict(part.strip().partition("=")[::2] for part in header.split(","))
    stamp, given = fields.get("t", ""), fields.get("v1", "")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise BadSignature(f"{SIGNATURE_HEADER}: t= must be the Unix time in seconds")
    if abs(now - int(stamp)) > SIGNATURE_TOLERANCE_SECONDS:
        raise BadSignature(
            f"{SIGNATURE_HEADER}: t= is more than {SIGNATURE_TOLERANCE_SECONDS} s from our clock"
        )
    given_bytes = given.encode("ascii", "replace")  # compare_digest refuses non-ASCII str
    matches = [
        hmac.compare_digest(_mac(key, int(stamp), body).encode(), given_bytes) for key in keys
    ]
    if not any(matches):
        raise BadSignature(f"{SIGNATURE_HEADER}: v1= is not the HMAC of this body")


def signup_keys(setting: str) -> tuple[str, ...]:
    """The keys of ``NEWSLETTER_SIGNUP_KEY`` (comma-separated: the new one and the old one while
    the website changes over)."""
    return tuple(key.strip() for key in setting.split(",") if key.strip())
