"""Signed tokens for the links in mails, with itsdangerous.

A token is bound to one subscriber and one purpose (the purpose is the itsdangerous salt, so a
confirmation token is not an unsubscribe token), and carries its signing time. Confirmation tokens
also carry a nonce that must equal the subscriber's current ``confirm_nonce``: confirming clears it,
which makes the link single-use. Unsubscribe tokens do not expire: RFC 8058 one-click links in old
mails must keep working (Gmail and Yahoo require it of bulk senders).

No token shows a subscriber id (ids are sequential: they would tell how many readers there are).
An unsubscribe token is the subscriber id sealed (:mod:`worker.subscriptions.sealed`: 26
characters, so ``unsubscribe+<token>@domain`` stays within RFC 5321's 64-character local part);
a confirmation token carries the sealed id inside its itsdangerous payload. Tokens issued before
(itsdangerous over the plain id) are still accepted.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from itsdangerous.serializer import Serializer

from worker.subscriptions import sealed

# Subscriber ids are 64-bit (bigint): a signed id beyond reached the database as "bigint out of
# range", an answer 500 instead of "this link is not valid".
MAX_SUBSCRIBER_ID = 2**63 - 1


class Purpose(StrEnum):
    CONFIRM = "confirm"
    UNSUBSCRIBE = "unsubscribe"
    PREFERENCES = "preferences"  # the reader's own page, linked from every mail


class TokenError(ValueError):
    """A token that cannot be used. ``code``: ``forged``, ``expired`` or ``used``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TokenClaims:
    subscriber_id: int
    nonce: str | None


# A payload this short (a sealed id in a JSON list: 30 bytes) never deflates to fewer bytes, so
# itsdangerous would send it as it is after spending a zlib stream on it (a fifth of a preferences
# token, issued per message of a send). Longer payloads keep itsdangerous's choice.
_NOT_WORTH_DEFLATING = 32


class _Signer(TimestampSigner):
    """itsdangerous's timestamp signer, its derived key kept (the same bytes each time: a hash
    of the salt and the secret key). The signature, and therefore the token, is unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[bytes | str | None, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        key = self._derived.get(secret_key)
        if key is None:
            key = self._derived[secret_key] = super().derive_key(secret_key)
        return key


class _Serializer(URLSafeTimedSerializer):
    """``URLSafeTimedSerializer`` with its signers made once (per salt) and short payloads not
    run through zlib; what it issues ``URLSafeTimedSerializer`` reads, and the reverse."""

    default_signer = _Signer

    def __init__(self, secret_key: str, salt: str) -> None:
        super().__init__(secret_key, salt=salt)
        self._signers: dict[str | bytes | None, Any] = {}

    def make_signer(self, salt: str | bytes | None = None) -> Any:
        signer = self._signers.get(salt)
        if signer is None:
            signer = self._signers[salt] = super().make_signer(salt)
        return signer

    def dump_payload(self, obj: Any) -> bytes:
        plain = Serializer.dump_payload(self, obj)
        if len(plain) <= _NOT_WORTH_DEFLATING:
            return base64_encode(plain)
        return super().dump_payload(obj)


class Tokens:
    """Issue and check tokens with the application's secret key."""

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("a secret key is required to sign tokens")
        self._secret = secret_key
        self._serializers: dict[Purpose, _Serializer] = {}

    def _serializer(self, purpose: Purpose) -> _Serializer:
        """One per purpose (stateless once built, so shared by threads): built per token, it
        cost a fifth of a preferences token, issued per message of a send."""
        serializer = self._serializers.get(purpose)
        if serializer is None:
            serializer = _Serializer(self._secret, salt=f"newsletter.{purpose}")
            self._serializers[purpose] = serializer
        return serializer

    def form_token(self, bound_to: str) -> str:
        """A CSRF token for a form on the page of the link token ``bound_to`` (hex, 64 chars):
        an HMAC-SHA256 (RFC 2104) of that token, so it is valid on that page only and a site
        that does not know the link token cannot make one."""
        key = f"newsletter.form:{self._secret}".encode()
        return hmac.new(key, bound_to.encode(), hashlib.sha256).hexdigest()

    def check_form_token(self, bound_to: str, given: str) -> bool:
        """Whether ``given`` is :meth:`form_token` of ``bound_to`` (constant-time comparison)."""
        # compare_digest takes ASCII str only; anything else is not our token anyway.
        return given.isascii() and hmac.compare_digest(self.form_token(bound_to), given)

    def issue(self, purpose: Purpose, subscriber_id: int, nonce: str | None = None) -> str:
        """A URL-safe token for ``subscriber_id``: the sealed id (26 characters) for
        unsubscribe, an itsdangerous token over the sealed id and ``nonce`` otherwise."""
        hidden = sealed.seal(subscriber_id, key=self._secret, purpose=f"token.{purpose}")
        if purpose == Purpose.UNSUBSCRIBE and nonce is None:
            return hidden
        payload: list[object] = [hidden] if nonce is None else [hidden, nonce]
        return self._serializer(purpose).dumps(payload)

    def check(
        self, purpose: Purpose, token: str, max_age_seconds: float | None = None
    ) -> TokenClaims:
        """The claims in ``token``; raises ``TokenError`` (``forged`` or ``expired``).

        ``max_age_seconds`` None means the token never expires.
        """
        if purpose == Purpose.UNSUBSCRIBE and sealed.is_sealed_form(token):
            subscriber_id = sealed.unseal(token, key=self._secret, purpose=f"token.{purpose}")
            if subscriber_id is None:
                raise TokenError("forged", "this link is not valid")
            return TokenClaims(subscriber_id=subscriber_id, nonce=None)
        serializer = self._serializer(purpose)
        try:
            if max_age_seconds is None:
                payload = serializer.loads(token)
            else:
                payload = serializer.loads(token, max_age=int(max_age_seconds))
        except SignatureExpired:
            raise TokenError("expired", "this link has expired") from None
        except BadSignature:
            raise TokenError("forged", "this link is not valid") from None
        if isinstance(payload, list) and payload and isinstance(payload[0], str):
            payload[0] = sealed.unseal(payload[0], key=self._secret, purpose=f"token.{purpose}")
        if (
            not isinstance(payload, list)
            or not payload
            or not isinstance(payload[0], int)
            or isinstance(payload[0], bool)
            or not 0 < payload[0] <= MAX_SUBSCRIBER_ID
        ):
            raise TokenError("forged", "this link is not valid")
        nonce = payload[1] if len(payload) > 1 and isinstance(payload[1], str) else None
        return TokenClaims(subscriber_id=payload[0], nonce=nonce)


def unsubscribe_token(tokens: Tokens, subscriber_id: int) -> str:
    """The never-expiring unsubscribe token of ``subscriber_id`` (links and mailto in mails)."""
    return tokens.issue(Purpose.UNSUBSCRIBE, subscriber_id)


def unsubscribe_subscriber_id(tokens: Tokens, token: str) -> int:
    """The subscriber id an unsubscribe token names; raises ``TokenError`` (``forged``)."""
    return tokens.check(Purpose.UNSUBSCRIBE, token).subscriber_id


def preferences_token(tokens: Tokens, subscriber_id: int) -> str:
    """The never-expiring token of ``subscriber_id``'s preferences page (``/p/{token}``): links in
    old mails keep working, as unsubscribe links must."""
    return tokens.issue(Purpose.PREFERENCES, subscriber_id)
