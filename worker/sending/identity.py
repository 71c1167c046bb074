"""VERP (variable envelope return path) addresses that encode the delivery they belong to.

The envelope sender of delivery 4711 is ``bounces+4711-1a2b3c4d5e@<bounce domain>``: a bounce
sent back to it names the delivery without any parsing of the bounce's body. The HMAC tag stops
anyone from forging bounces that would suppress other readers.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_LOCAL = re.compile(
    r"^(?P<prefix>[a-z0-9._-]+)\+(?P<id>\d{1,19})-(?P<tag>[0-9a-f]{10})$", re.IGNORECASE
)


def _tag(delivery_id: int, key: str) -> str:
    return hmac.new(key.encode(), f"verp:{delivery_id}".encode(), hashlib.sha256).hexdigest()[:10]


def verp_address(delivery_id: int, *, key: str, domain: str, prefix: str = "bounces") -> str:
    """The envelope sender (MAIL FROM) for ``delivery_id``."""
    return f"{prefix}+{delivery_id}-{_tag(delivery_id, key)}@{domain}"


def parse_verp(local_or_address: str, *, key: str) -> int | None:
    """The delivery id in a VERP local part (``bounces+4711-…``) or address; None if absent or
    forged."""
    local = local_or_address.rsplit("@", 1)[0].strip("<> ")
    match = _LOCAL.match(local)
    if match is None:
        return None
    delivery_id = int(match["id"])
    return (
        delivery_id if hmac.compare_digest(match["tag"].lower(), _tag(delivery_id, key)) else None
    )
