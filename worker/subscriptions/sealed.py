"""Numbers sealed for mail and links: unforgeable, and telling nothing about the number.

Every id we hand out (a delivery in the VERP sender, Message-ID and ``X-Newsletter-Delivery``; a
subscriber in unsubscribe and confirmation tokens) is sealed here, so a reader who holds his own
copy can neither make a neighbour's id nor count how many were sent. A sealed value is one AES
block (the number, 8 bytes big-endian, and an 8-byte HMAC-SHA256 tag of it) in lower-case base32
without padding: 26 characters from ``[a-z2-7]``, which survive MTAs that lowercase local parts.
Keys for AES and HMAC are derived per ``purpose`` from the secret key, so a sealed delivery is not
a valid sealed subscriber. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import threading
from functools import lru_cache

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

LENGTH = 26  # 16 bytes in base32 without padding
MAX_NUMBER = 2**63 - 1  # a BIGINT id
_FORM = re.compile(rf"[a-z2-7]{{{LENGTH}}}", re.IGNORECASE)


@lru_cache(maxsize=32)
def _subkey(key: str, label: str) -> bytes:
    """A key for one use, derived from the secret key (HMAC-SHA256 as a PRF, RFC 5869 §2.2)."""
    return hmac.new(key.encode(), f"newsletter-sealed:{label}".encode(), hashlib.sha256).digest()


@lru_cache(maxsize=16)
def _cipher(key: str, purpose: str) -> Cipher[modes.ECB]:
    # One AES block, encrypted alone: ECB is the raw block cipher (a keyed permutation), which is
    # what sealing one 16-byte block needs; no message spans two blocks.
    return Cipher(algorithms.AES(_subkey(key, f"{purpose}:aes")[:16]), modes.ECB())


# Per thread, one encrypting context per (key, purpose): a context is not thread-safe, and
# making one per seal cost a fifth of it (a send seals three ids per message). Reusing it is
# sound for ECB alone: each 16-byte block is encrypted on its own, nothing carries over.
_encryptors = threading.local()


def _encryptor(key: str, purpose: str) -> CipherContext:
    contexts: dict[tuple[str, str], CipherContext] | None = getattr(_encryptors, "by_key", None)
    if contexts is None:
        contexts = _encryptors.by_key = {}
    context = contexts.get((key, purpose))
    if context is None:
        if len(contexts) >= 16:  # as _cipher's cache: a few keys and purposes, never many
            contexts.clear()
        context = contexts[key, purpose] = _cipher(key, purpose).encryptor()
    return context


def _tag(number: int, key: str, purpose: str) -> bytes:
    # hmac.digest: the one-shot HMAC (OpenSSL's), same value as hmac.new(…).digest()
    mac_key = _subkey(key, f"{purpose}:mac")
    return hmac.digest(mac_key, number.to_bytes(8, "big"), hashlib.sha256)[:8]


def seal(number: int, *, key: str, purpose: str) -> str:
    """``number`` (0 … 2**63-1) sealed under ``key`` for ``purpose``: 26 lower-case base32
    characters, the same each time. Raises ``ValueError`` for a number out of range."""
    if not 0 <= number <= MAX_NUMBER:
        raise ValueError(f"cannot seal {number}: out of range 0..2**63-1")
    # one whole block into ECB: update returns it at once, nothing is left for finalize
    block = _encryptor(key, purpose).update(number.to_bytes(8, "big") + _tag(number, key, purpose))
    return base64.b32encode(block).decode().rstrip("=").lower()


def is_sealed_form(value: str | None) -> bool:
    """Whether ``value`` has the shape of a sealed value (says nothing of its authenticity)."""
    return bool(_FORM.fullmatch((value or "").strip()))


def unseal(value: str | None, *, key: str, purpose: str) -> int | None:
    """The number in ``value`` sealed by :func:`seal` under ``key`` for ``purpose`` (any case,
    surrounding space ignored); None if malformed, forged, or sealed under another key or purpose.
    Never raises."""
    text = (value or "").strip()
    if not _FORM.fullmatch(text):
        return None
    try:
        block = base64.b32decode(text.upper() + "======")
    except (binascii.Error, ValueError):
        return None
    decryptor = _cipher(key, purpose).decryptor()
    plain = decryptor.update(block) + decryptor.finalize()
    number = int.from_bytes(plain[:8], "big")
    if number > MAX_NUMBER or not hmac.compare_digest(plain[8:], _tag(number, key, purpose)):
        return None
    return number
