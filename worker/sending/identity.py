"""Every identifier we put in mail, as a format/parse pair: what we write is what we read back.

Every identifier that names a delivery carries the delivery id *sealed* (:func:`seal_delivery`):
26 lower-case base32 characters that only the holder of the secret key can make or read. The
envelope sender is ``bounces+<sealed>@<bounce domain>``, the Message-ID
``<<sealed>.2024-W28@news.example.org>``, the header ``X-Newsletter-Delivery: <sealed>``. A sealed
id is unforgeable (an HMAC tag inside it: a guessed or neighbouring value is refused) and reveals
no count (the block is AES-encrypted, so ids 3 and 4 look unrelated). Lower case base32 survives
MTAs that lowercase local parts; ``bounces+`` and 26 characters stay far below RFC 5321 §4.5.3.1.1's
64-character local part.

Mail sent before sealed ids still bounces for days: the old VERP form
``bounces+4711-<10 hex HMAC>`` still parses (it is tagged). The old untagged forms
(``<d4711.…>``, ``X-Newsletter-Delivery: 4711``) parse as :class:`Untagged` only, which feedback
policy records but never trusts (see ``worker.feedback.policy``).
Parsers never raise: a foreign or malformed value gives None. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache

from worker.subscriptions import sealed

BOUNCE_PREFIX = "bounces"  # local part of the envelope sender (RFC 5321 MAIL FROM)
UNSUBSCRIBE_PREFIX = "unsubscribe"  # local part of the List-Unsubscribe mailto (RFC 2369 §3.2)

DELIVERY_HEADER = "X-Newsletter-Delivery"
SUBSCRIBER_HEADER = "X-Newsletter-Subscriber"
EDITION_HEADER = "X-Newsletter-Edition"

_MAX_ID_DIGITS = 18  # a BIGINT id fits; longer runs of digits are not ours
_ASCII_ID = re.compile(rf"[0-9]{{1,{_MAX_ID_DIGITS}}}")
_LOCAL = re.compile(r"^(?P<prefix>[a-z0-9._-]+)\+(?P<id>[0-9]{1,19})-(?P<tag>[0-9a-f]{10})$", re.I)
_SEALED_LENGTH = sealed.LENGTH
_SEALED_LOCAL = re.compile(
    rf"^(?P<prefix>[a-z0-9._-]+)\+(?P<sealed>[a-z2-7]{{{_SEALED_LENGTH}}})$", re.I
)
_EDITION_MESSAGE_ID = re.compile(
    r"^<?(?P<id>d[0-9]{1,18}|[a-z2-7]{26})\.(?P<edition>[^@<>\s]+)@(?P<domain>[^@<>\s]+)>?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Untagged:
    """A delivery id read from an identifier without a tag (mail sent before sealed ids, or a
    forgery): it names a delivery but proves nothing, so feedback policy never acts on it."""

    delivery_id: int


_FEEDBACK_ID_PART = re.compile(r"[^:\s]+")  # the separator and folding whitespace excluded


@lru_cache(maxsize=64)  # composing seals each delivery three times (VERP, Message-ID, header)
def seal_delivery(delivery_id: int, *, key: str) -> str:
    """``delivery_id`` (0 … 2**63-1) sealed under ``key``: 26 lower-case base32 characters (see
    :func:`worker.subscriptions.sealed.seal`: AES over the id and its HMAC-SHA256 tag; forging one
    takes 2**64 guesses and the value says nothing about the id). Deterministic (a resent delivery
    keeps its Message-ID). Raises ``ValueError`` for an id out of range."""
    return sealed.seal(delivery_id, key=key, purpose="delivery")


def open_delivery(value: str | None, *, key: str) -> int | None:
    """The delivery id in a value made by :func:`seal_delivery` under ``key`` (any case,
    surrounding space ignored); None if malformed, forged or sealed under another key."""
    return sealed.unseal(value, key=key, purpose="delivery")


def _tag(delivery_id: int, key: str) -> str:
    return hmac.new(key.encode(), f"verp:{delivery_id}".encode(), hashlib.sha256).hexdigest()[:10]


def _local_part(local_or_address: str) -> str:
    return local_or_address.rsplit("@", 1)[0].strip("<> ")


def verp_address(delivery_id: int, *, key: str, domain: str, prefix: str = BOUNCE_PREFIX) -> str:
    """The envelope sender (MAIL FROM) for ``delivery_id``: ``bounces+<sealed>@domain`` (see
    :func:`seal_delivery`; the local part is ``len(prefix) + 27`` characters)."""
    return f"{prefix}+{seal_delivery(delivery_id, key=key)}@{domain}"


def parse_verp(local_or_address: str, *, key: str) -> int | None:
    """The delivery id in a VERP local part or address: ``bounces+<sealed>`` or the format of
    mail sent before sealed ids, ``bounces+4711-<10 hex HMAC>``; None if absent or forged."""
    local = _local_part(local_or_address)
    sealed = _SEALED_LOCAL.match(local)
    if sealed is not None:
        return open_delivery(sealed["sealed"], key=key)
    match = _LOCAL.match(local)
    if match is None:
        return None
    delivery_id = int(match["id"])
    return (
        delivery_id if hmac.compare_digest(match["tag"].lower(), _tag(delivery_id, key)) else None
    )


def bounce_address(domain: str, prefix: str = BOUNCE_PREFIX) -> str:
    """The plain bounce address (``bounces@domain``): envelope sender of mail with no delivery."""
    return f"{prefix}@{domain}"


def local_token(address: str | None, prefix: str) -> str | None:
    """What follows ``<prefix>+`` in the local part of ``address`` (``bounces+4711-ab…@d`` →
    ``4711-ab…``); the prefix matches case-insensitively, the rest is returned as found. None when
    ``address`` has no such local part."""
    if not address:
        return None
    local = address.strip().strip("<>").rsplit("@", 1)[0]
    head, plus, tail = local.partition("+")
    return tail if plus and tail and head.lower() == prefix.lower() else None


def edition_message_id(delivery_id: int, edition_key: str, domain: str, *, key: str) -> str:
    """``<<sealed>.2024-W28@news.example.org>`` (RFC 5322 §3.6.4), angle brackets included:
    derived from the delivery (sealed, :func:`seal_delivery`), so a resend is recognisable
    downstream and a bounce quoting it names it without telling how many were sent."""
    return f"<{seal_delivery(delivery_id, key=key)}.{edition_key}@{domain}>"


def parse_edition_message_id(
    value: str | None, domain: str = "", *, key: str
) -> int | Untagged | None:
    """The delivery id in an edition Message-ID (brackets optional): an ``int`` for a sealed id
    under ``key``, :class:`Untagged` for the old form ``<d4711.…>``, None for anything else
    (forged seal, foreign format; with ``domain``, another domain, case-insensitive)."""
    match = _EDITION_MESSAGE_ID.match((value or "").strip())
    if match is None or (domain and match["domain"].lower() != domain.lower()):
        return None
    found = match["id"]
    if found[0] in "dD" and found[1:].isdigit():
        return Untagged(int(found[1:]))
    return open_delivery(found, key=key)


def transactional_message_id(name: str, domain: str) -> str:
    """``<confirmation.<32 hex>@domain>``: unique per message, naming its kind, no delivery."""
    return f"<{name}.{uuid.uuid4().hex}@{domain}>"


def delivery_header(delivery_id: int, *, key: str) -> str:
    """The value of ``X-Newsletter-Delivery``: the sealed delivery id (:func:`seal_delivery`)."""
    return seal_delivery(delivery_id, key=key)


def parse_id(value: str | None) -> int | None:
    """An id from our header or provider metadata: 1–18 ASCII digits, surrounding space ignored,
    else None (``str.isdigit`` would accept ``²`` or Arabic-Indic digits, that ``int`` refuses or
    reads as another number)."""
    text = (value or "").strip()
    return int(text) if _ASCII_ID.fullmatch(text) else None


def parse_delivery_header(value: str | None, *, key: str) -> int | Untagged | None:
    """The delivery id in an ``X-Newsletter-Delivery`` value: an ``int`` for a sealed id under
    ``key``, :class:`Untagged` for the old decimal form, else None."""
    sealed = open_delivery(value, key=key)
    if sealed is not None:
        return sealed
    old = parse_id(value)
    return Untagged(old) if old is not None else None


def unsubscribe_mailto(token: str, domain: str, prefix: str = UNSUBSCRIBE_PREFIX) -> str:
    """The List-Unsubscribe mailto URI (RFC 2369 §3.2): ``mailto:unsubscribe+<token>@domain``
    with ``?subject=unsubscribe``."""
    return f"mailto:{prefix}+{token}@{domain}?subject=unsubscribe"


def parse_unsubscribe_address(address: str | None, prefix: str = UNSUBSCRIBE_PREFIX) -> str | None:
    """The token in a mail to the unsubscribe address (``unsubscribe+<token>@…`` or its mailto
    URI), else None. The token is not checked here: ``Tokens.check`` does that."""
    if address and address.lower().startswith("mailto:"):
        address = address[len("mailto:") :].split("?", 1)[0]
    return local_token(address, prefix)


def list_id(slug: str, domain: str) -> str:
    """The List-Id identifier (RFC 2919 §2): ``weekly.news.example.org``."""
    return f"{slug}.{domain}"


def parse_list_id(value: str | None, domain: str) -> str | None:
    """The newsletter slug in a List-Id value (``Name <slug.domain>`` or the bare identifier),
    else None for another domain's list."""
    text = (value or "").strip()
    if "<" in text:
        text = text.rsplit("<", 1)[1].split(">", 1)[0]
    slug, dot, rest = text.partition(".")
    return slug if dot and slug and rest.lower() == domain.lower() else None


@dataclass(frozen=True)
class FeedbackId:
    """Gmail's Feedback-ID ``a:b:c:SenderId``: edition key, language, newsletter slug, and the
    kind of mail (``newsletter`` or ``transactional``), so complaint rates split by each."""

    campaign: str
    language: str
    slug: str
    kind: str = "newsletter"

    def format(self) -> str:
        """The header value; raises ``ValueError`` for an empty part or one with ``:`` or
        whitespace."""
        parts = (self.campaign, self.language, self.slug, self.kind)
        if not all(_FEEDBACK_ID_PART.fullmatch(part) for part in parts):
            raise ValueError(f"Feedback-ID parts must be non-empty, no ':' or space: {parts!r}")
        return ":".join(parts)

    @classmethod
    def parse(cls, value: str | None) -> FeedbackId | None:
        """The four parts of a Feedback-ID value, else None."""
        parts = (value or "").strip().split(":")
        if len(parts) != 4 or not all(_FEEDBACK_ID_PART.fullmatch(part) for part in parts):
            return None
        return cls(*parts)
