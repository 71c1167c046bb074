"""In-app DKIM signing (RFC 6376) with OpenSSL, for when the relay does not sign.

dkimpy signs in pure Python (12–20 ms a message); here the RSA signature comes from
``cryptography`` (OpenSSL, about 1 ms for a 2048-bit key) and the body is hashed with ``hashlib``.
Canonicalisation is ``relaxed`` for headers (relays may refold them) and ``simple`` for the body:
the body is quoted-printable with CRLF line ends (see ``worker.sending.mime``), which relays pass
through
unchanged, so the body hash is one SHA-256 over the bytes. dkimpy verifies these signatures in the
tests.

``h=`` covers From, Subject, Date, Message-ID, List-Unsubscribe and List-Unsubscribe-Post (RFC
8058 §4 requires the last two for one-click unsubscribe) and the other headers that identify the
mail; From, Subject and the two List-Unsubscribe headers are over-signed (named once more than
they occur) so that nobody can add a second one without breaking the signature (RFC 6376 §8.15).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SIGNED_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
    "mime-version",
    "content-type",
    "content-language",
)
OVER_SIGNED = ("from", "subject", "list-unsubscribe", "list-unsubscribe-post")
_WSP = re.compile(rb"[ \t]+")
_FOLD = re.compile(rb"\r\n(?=[ \t])")


class DkimError(ValueError):
    """The key cannot be used, or the message has no header/body separator."""


def canonical_header(name: bytes, value: bytes) -> bytes:
    """``relaxed`` header canonicalisation (RFC 6376 §3.4.2), with CRLF at the end."""
    value = _WSP.sub(b" ", _FOLD.sub(b"", value)).strip(b" \t")
    return name.strip().lower() + b":" + value + b"\r\n"


def simple_body(body: bytes) -> bytes:
    """``simple`` body canonicalisation (RFC 6376 §3.4.3): no trailing empty lines, one CRLF."""
    stripped = body.rstrip(b"\r\n")
    return stripped + b"\r\n"


def split_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields of ``head`` (without the blank line) as (name, raw value incl. folds)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        elif line:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields


@dataclass(frozen=True)
class DkimSigner:
    """Signs messages for ``domain`` with ``selector``; ``key`` is an RSA private key."""

    domain: str
    selector: str
    key: rsa.RSAPrivateKey

    @classmethod
    def from_file(cls, path: str | Path, *, domain: str, selector: str) -> DkimSigner:
        """Load a PEM private key (PKCS#1 or PKCS#8, unencrypted). Raises ``DkimError``."""
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise DkimError(f"DKIM key {path}: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimError(f"DKIM key {path}: not an RSA key")
        return cls(domain=domain, selector=selector, key=key)

    def public_record(self) -> str:
        """The DNS TXT record to publish at ``<selector>._domainkey.<domain>``."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()

    def sign(self, message: bytes, now: float | None = None) -> bytes:
        """``message`` (CRLF line ends) with a ``DKIM-Signature`` header in front.

        Raises ``DkimError`` when the message has no blank line between headers and body.
        """
        head, sep, body = message.partition(b"\r\n\r\n")
        if not sep:
            raise DkimError("message has no header/body separator")
        fields = split_headers(head)
        present = [n.strip().lower().decode() for n, _ in fields]
        names = [h for h in SIGNED_HEADERS if h in present]
        names += [h for h in OVER_SIGNED if h in present]  # over-signing: one more than present
        body_hash = base64.b64encode(hashlib.sha256(simple_body(body)).digest()).decode()
        tags = (
            f"v=1; a=rsa-sha256; c=relaxed/simple; d={self.domain}; s={self.selector};\r\n"
            f"\tt={int(now if now is not None else time.time())}; h={':'.join(names)};\r\n"
            f"\tbh={body_hash};\r\n\tb="
        )
        signed = self._signed_headers(fields, names)
        signed += canonical_header(b"DKIM-Signature", b" " + tags.encode())[:-2]
        signature = self.key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
        b64 = base64.b64encode(signature).decode()
        folded = "\r\n\t".join(b64[i : i + 72] for i in range(0, len(b64), 72))
        return f"DKIM-Signature: {tags}{folded}\r\n".encode() + message

    @staticmethod
    def _signed_headers(fields: list[tuple[bytes, bytes]], names: list[str]) -> bytes:
        """Canonical headers in ``h=`` order; a repeated name takes the next instance from the
        bottom, a name with none left signs nothing (RFC 6376 §5.4.2)."""
        remaining: dict[str, list[tuple[bytes, bytes]]] = {}
        for name, value in fields:
            remaining.setdefault(name.strip().lower().decode(), []).append((name, value))
        out = []
        for wanted in names:
            instances = remaining.get(wanted)
            if instances:
                raw_name, value = instances.pop()
                out.append(canonical_header(raw_name, value))
        return b"".join(out)
