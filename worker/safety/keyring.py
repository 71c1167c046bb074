"""The data keys: readers' addresses encrypted at rest, and the blind index that finds them.

Every stored copy of an address is sealed with AES-256-GCM (NIST SP 800-38D) under a *data key*
kept outside the database (``NEWSLETTER_DATA_KEY``, ``NEWSLETTER_DATA_KEY_FILE`` or, while
rotating, ``NEWSLETTER_DATA_KEYS="2:<b64>,1:<b64>"``; the first key encrypts, all decrypt). A
sealed text is ``enc1:`` followed by URL-safe base64 of::

    version (1 byte, 1) | key id (2 bytes, big-endian) | nonce (12 random bytes) | ciphertext+tag

and the column's name (``subscriber.email``) is the associated data, so a value copied into
another column does not open. Sealed bytes (stored inbound mail) are the same without base64,
behind the magic ``NLENC\\x01``.

Look-ups by address use the *blind index*: HMAC-SHA256 (RFC 2104) of the canonical address under
a key derived (HKDF-SHA256, RFC 5869) from the encrypting data key, as 64 hex digits. It is
keyed by the data key, not the secret key, so the web server's secret alone cannot test
guesses. ``newsletter keys rotate`` re-seals every value and recomputes the index under the
new key.

The process's keys are installed once at start (``install``) by ``Runtime``; the column types
of ``worker.models`` read them with ``current()``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TEXT_PREFIX = "enc1:"
BYTES_MAGIC = b"NLENC\x01"
VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
MAX_KEY_ID = 65535
_URLSAFE = bytes.maketrans(b"-_", b"+/")  # URL-safe base64 back to the standard alphabet
HOW_TO_MAKE_A_DATA_KEY = (
    "make one with `newsletter keys generate --data` "
    "(or: python -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())'), "
    "keep it outside the database and its backups, and give the same value to every process"
)


class DataKeyError(ValueError):
    """The data key is missing, malformed, or not the key the stored data were sealed with."""


class SealedValueError(ValueError):
    """A stored value does not open: sealed under an unknown key id, or altered."""


@dataclass(frozen=True)
class Keyring:
    """The data keys of this process: ``keys`` by id (32 bytes each); ``primary`` encrypts."""

    keys: Mapping[int, bytes]
    primary: int
    _ciphers: dict[int, AESGCM] = field(default_factory=dict, compare=False, repr=False)
    _index_key: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        for key_id, key in self.keys.items():
            self._ciphers[key_id] = AESGCM(key)
        object.__setattr__(self, "_index_key", index_key_of(self.keys[self.primary]))

    # -- text -------------------------------------------------------------------------------
    def seal(self, text: str, column: str) -> str:
        """``text`` sealed under the primary key for ``column`` (``"table.column"``)."""
        return (
            TEXT_PREFIX
            + base64.urlsafe_b64encode(self.seal_bytes_raw(text.encode(), column)).decode()
        )

    def open(self, stored: str, column: str) -> str:
        """The text of a value ``seal`` made; ``SealedValueError`` when it does not open."""
        if not is_sealed(stored):
            raise SealedValueError(f"{column}: the stored value is not sealed")
        try:
            # base64.urlsafe_b64decode without its Python layers (the same decoding): a send
            # opens two addresses per message (bench/address_sealing.py)
            raw = binascii.a2b_base64(stored[len(TEXT_PREFIX) :].encode().translate(_URLSAFE))
        except (binascii.Error, ValueError) as exc:
            raise SealedValueError(f"{column}: the stored value is not valid base64") from exc
        return self.open_bytes_raw(raw, column).decode()

    # -- bytes ------------------------------------------------------------------------------
    def seal_bytes(self, data: bytes, column: str) -> bytes:
        """``data`` sealed under the primary key, behind ``BYTES_MAGIC``."""
        return BYTES_MAGIC + self.seal_bytes_raw(data, column)

    def open_bytes(self, stored: bytes, column: str) -> bytes:
        """The bytes of a value ``seal_bytes`` made; ``SealedValueError`` when it does not open."""
        if not stored.startswith(BYTES_MAGIC):
            raise SealedValueError(f"{column}: the stored value is not sealed")
        return self.open_bytes_raw(stored[len(BYTES_MAGIC) :], column)

    def seal_bytes_raw(self, data: bytes, column: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        header = _header(self.primary)
        return header + nonce + self._ciphers[self.primary].encrypt(nonce, data, column.encode())

    def open_bytes_raw(self, raw: bytes, column: str) -> bytes:
        if len(raw) < 3 + NONCE_BYTES + 16 or raw[0] != VERSION:
            raise SealedValueError(f"{column}: unknown sealed format")
        key_id = raw[1] << 8 | raw[2]  # big-endian, as sealed
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise SealedValueError(
                f"{column}: sealed under data key id {key_id}, which is not configured"
            )
        try:
            return cipher.decrypt(raw[3 : 3 + NONCE_BYTES], raw[3 + NONCE_BYTES :], column.encode())
        except InvalidTag as exc:
            raise SealedValueError(
                f"{column}: does not open with data key id {key_id} (a wrong key, or altered)"
            ) from exc

    # -- blind index ------------------------------------------------------------------------
    def blind_index(self, canonical: str) -> str:
        """The blind index of a canonical (case-folded) address: 64 hex digits."""
        return hmac.new(self._index_key, canonical.encode(), hashlib.sha256).hexdigest()


def index_key_of(data_key: bytes) -> bytes:
    """The blind-index key derived from ``data_key`` (HKDF-SHA256, RFC 5869, no salt)."""
    return HKDF(hashes.SHA256(), 32, None, b"newsletter blind index v1").derive(data_key)


def is_sealed(value: str) -> bool:
    """Whether a stored text is already in the sealed format (migration, rotation: skip it)."""
    return value.startswith(TEXT_PREFIX)


def sealed_prefix(key_id: int) -> str:
    """The first characters of every text sealed under ``key_id`` (``enc1:`` and the base64 of
    the version byte and the key id: exactly 4 characters, whatever follows). A query can thus
    tell, without opening anything, which rows are not yet under a key (``keys rotate``)."""
    return TEXT_PREFIX + base64.urlsafe_b64encode(_header(key_id)).decode()


def sealed_bytes_prefix(key_id: int) -> bytes:
    """The first bytes of every value ``seal_bytes`` made under ``key_id``."""
    return BYTES_MAGIC + _header(key_id)


def _header(key_id: int) -> bytes:
    return bytes([VERSION]) + key_id.to_bytes(2, "big")


def key_id_of(stored: str | bytes) -> int | None:
    """The key id a stored value is sealed under, or None when it is not sealed."""
    try:
        if isinstance(stored, bytes):
            raw = stored[len(BYTES_MAGIC) :] if stored.startswith(BYTES_MAGIC) else b""
        else:
            raw = base64.urlsafe_b64decode(stored[len(TEXT_PREFIX) : len(TEXT_PREFIX) + 4])
            raw = raw if is_sealed(stored) else b""
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw[1:3], "big") if len(raw) >= 3 else None


def _decode_key(text: str, name: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise DataKeyError(
            f"{name} is not the base64 of {KEY_BYTES} bytes: {HOW_TO_MAKE_A_DATA_KEY}"
        )
    return key


def keyring_from_env(env: Mapping[str, str]) -> Keyring:
    """The keyring configured in ``env``; ``DataKeyError`` naming the variable when it is missing
    or malformed.

    ``NEWSLETTER_DATA_KEYS`` ("2:<b64>,1:<b64>", the first encrypts) wins; else
    ``NEWSLETTER_DATA_KEY`` (with ``NEWSLETTER_DATA_KEY_ID``, default 1) or the file named by
    ``NEWSLETTER_DATA_KEY_FILE``.
    """
    many = env.get("NEWSLETTER_DATA_KEYS", "").strip()
    if many:
        keys: dict[int, bytes] = {}
        order: list[int] = []
        for n, entry in enumerate(many.split(","), 1):
            key_id_text, sep, b64 = entry.strip().partition(":")
            if not sep or not key_id_text.isdigit() or not 1 <= int(key_id_text) <= MAX_KEY_ID:
                raise DataKeyError(
                    f"NEWSLETTER_DATA_KEYS entry {n}: expected '<id>:<base64 key>' with an id "
                    f"from 1 to {MAX_KEY_ID}"
                )
            key_id = int(key_id_text)
            if key_id in keys:
                raise DataKeyError(f"NEWSLETTER_DATA_KEYS: key id {key_id} is given twice")
            keys[key_id] = _decode_key(b64, f"NEWSLETTER_DATA_KEYS entry {n}")
            order.append(key_id)
        return Keyring(keys, order[0])
    key_id_text = env.get("NEWSLETTER_DATA_KEY_ID", "1").strip()
    if not key_id_text.isdigit() or not 1 <= int(key_id_text) <= MAX_KEY_ID:
        raise DataKeyError(f"NEWSLETTER_DATA_KEY_ID: a number from 1 to {MAX_KEY_ID}")
    text = env.get("NEWSLETTER_DATA_KEY", "")
    name = "NEWSLETTER_DATA_KEY"
    if not text and env.get("NEWSLETTER_DATA_KEY_FILE"):
        name = "NEWSLETTER_DATA_KEY_FILE"
        try:
            text = Path(env["NEWSLETTER_DATA_KEY_FILE"]).read_text()
        except OSError as exc:
            raise DataKeyError(f"{name}: cannot read the key file ({exc.strerror})") from exc
    if not text:
        raise DataKeyError(
            "NEWSLETTER_DATA_KEY (or NEWSLETTER_DATA_KEY_FILE) is not set: readers' addresses "
            f"are encrypted with it; {HOW_TO_MAKE_A_DATA_KEY}"
        )
    return Keyring({int(key_id_text): _decode_key(text, name)}, int(key_id_text))


def new_data_key() -> str:
    """A new random data key: base64 of 32 bytes."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


_installed: Keyring | None = None
_lock = threading.Lock()


def install(keyring: Keyring | None) -> None:
    """Make ``keyring`` the process's keys (None: none, for tests of a refusal)."""
    global _installed
    with _lock:
        _installed = keyring


def current() -> Keyring:
    """The process's keys; ``DataKeyError`` when no process start installed them."""
    if _installed is None:
        raise DataKeyError(
            "no data key is installed in this process: NEWSLETTER_DATA_KEY must be set and "
            f"the process started through Runtime; {HOW_TO_MAKE_A_DATA_KEY}"
        )
    return _installed


def blind_index(canonical: str) -> str:
    """The blind index of a canonical address under the process's keys (see ``Keyring``)."""
    return current().blind_index(canonical)
