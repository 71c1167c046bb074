"""Desk accounts and their login sessions.

A desk user has a unique name, a role (:class:`Role`: an ``editor`` writes, previews, test-sends,
schedules and sends; an ``operator`` does all that plus throttle, pause, cancel, suppressions and
the desk's accounts), a password hashed with argon2id (``argon2-cffi``'s defaults, RFC 9106's
second recommended option) and their own mail address for test sends, sealed at rest like
readers' addresses (``models.EncryptedText``).

A login is a :class:`~worker.models.DeskSession`: the browser holds a random token (256 bits);
the database holds only its SHA-256, so a leaked backup opens no session. A session ends when
idle for :attr:`SessionPolicy.idle` (each request moves ``expires_at`` on) and at the latest
:attr:`SessionPolicy.lifetime` after it began, and at once when revoked: logout, the user
removed, disabled or given a new password (:func:`end_sessions`).
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worker.models import DeskAccount, DeskSession

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD = 10  # characters; NIST SP 800-63B §3.1.1.2 asks for at least 8
MAX_PASSWORD = 1024  # hashing a megabyte "password" costs nothing useful and some CPU
# argon2id, t=3, m=64 MiB, p=4: each hash or check holds 64 MiB for about 50 ms
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified when the name is unknown, so a wrong name costs as long as a wrong password.
    Made on first use, not at import (64 MiB at the start of every process would show in its
    peak memory)."""
    return _hasher.hash("not a password of anyone")


class Role(StrEnum):
    """What a desk user may do."""

    EDITOR = "editor"  # write, preview, test-send, schedule and send editions
    OPERATOR = "operator"  # everything an editor does, plus throttle, pause, cancel, accounts


class AccountError(ValueError):
    """A request about desk accounts that cannot be done; the message says what and why."""


@dataclass(frozen=True)
class SessionPolicy:
    """How long a desk login lasts: ``idle`` without a request, ``lifetime`` at most."""

    idle: timedelta
    lifetime: timedelta


@dataclass(frozen=True)
class Login:
    """A session just opened: ``token`` goes to the browser (once), ``csrf`` into its forms."""

    token: str
    csrf: str
    expires_at: datetime


def check_name(name: str) -> str:
    """``name`` if it is a valid desk user name (1–64 of letters, digits, ``.``, ``_``, ``-``,
    starting with a letter or digit); else :class:`AccountError`."""
    if not NAME.match(name):
        raise AccountError(
            f"user name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    """``password`` if it is long enough (:data:`MIN_PASSWORD` to :data:`MAX_PASSWORD`
    characters); else :class:`AccountError`."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(
            f"password: {MIN_PASSWORD} to {MAX_PASSWORD} characters (got {len(password)})"
        )
    return password


def check_address(address: str) -> str:
    """The normalised form of the user's own mail address; :class:`AccountError` if invalid."""
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise AccountError(f"address: {exc}") from None


def add_user(
    session: Session, name: str, role: str, password: str, address: str | None, now: datetime
) -> DeskAccount:
    """Create desk user ``name`` with ``role`` (``editor`` or ``operator``), ``password``
    (hashed here) and ``address`` (their own, for test sends; may be None). Raises
    :class:`AccountError` for a taken name or an invalid name, role, password or address."""
    check_name(name)
    if role not in set(Role):
        raise AccountError(f"role {role!r}: editor or operator")
    check_password(password)
    normalised = check_address(address) if address else None
    if session.scalars(select(DeskAccount.id).where(DeskAccount.name == name)).first() is not None:
        raise AccountError(f"user {name!r} exists already")
    user = DeskAccount(
        name=name,
        role=role,
        password_hash=_hasher.hash(password),
        address=normalised,
        created_at=now,
        disabled=False,
    )
    session.add(user)
    session.flush()
    return user


def user_named(session: Session, name: str) -> DeskAccount:
    """The desk user called ``name``; :class:`AccountError` if there is none."""
    if not NAME.match(name):
        raise AccountError(f"no desk user {name!r}")
    user = session.scalars(select(DeskAccount).where(DeskAccount.name == name)).first()
    if user is None:
        raise AccountError(f"no desk user {name!r}")
    return user


def users(session: Session) -> list[DeskAccount]:
    """Every desk user, by name."""
    return list(session.scalars(select(DeskAccount).order_by(DeskAccount.name)))


def remove_user(session: Session, name: str, now: datetime) -> int:
    """Delete desk user ``name`` and their sessions; the number of live sessions ended.
    :class:`AccountError` if there is no such user. The action log keeps their name."""
    user = user_named(session, name)
    ended = end_sessions(session, user.id, now)
    session.query(DeskSession).filter(DeskSession.user_id == user.id).delete()
    session.delete(user)
    session.flush()
    return ended


def reset_password(session: Session, name: str, password: str, now: datetime) -> int:
    """Give ``name`` a new password and end every session of theirs; the number ended."""
    check_password(password)
    user = user_named(session, name)
    user.password_hash = _hasher.hash(password)
    return end_sessions(session, user.id, now)


def authenticate(session: Session, name: str, password: str, now: datetime) -> DeskAccount | None:
    """The user if ``password`` is theirs and the account is not disabled, else None (an
    unknown name costs the same time as a wrong password). Records the login time and rehashes
    a hash made with weaker parameters than today's."""
    if len(password) > MAX_PASSWORD:
        return None
    # A name no user can have (a NUL, which PostgreSQL refuses in text) is not looked up
    user = (
        session.scalars(select(DeskAccount).where(DeskAccount.name == name)).first()
        if NAME.match(name)
        else None
    )
    try:
        _hasher.verify(user.password_hash if user else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or user.disabled:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.last_login_at = now
    return user


def token_hash(token: str) -> str:
    """The stored form of a session token: SHA-256, hex (the token has 256 random bits, so a
    slow hash would add nothing)."""
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(
    session: Session, user: DeskAccount, now: datetime, policy: SessionPolicy
) -> Login:
    """A new login of ``user``: the token for the browser and the CSRF token of its forms."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = min(now + policy.idle, now + policy.lifetime)
    session.add(
        DeskSession(
            token_hash=token_hash(token),
            user_id=user.id,
            csrf_token=csrf,
            created_at=now,
            last_seen_at=now,
            expires_at=expires,
        )
    )
    session.flush()
    return Login(token=token, csrf=csrf, expires_at=expires)


def live_session(
    session: Session, token: str, now: datetime, policy: SessionPolicy
) -> tuple[DeskSession, DeskAccount] | None:
    """The live session of ``token`` and its user, its idle expiry moved on (never past the
    absolute lifetime); None if the token is unknown, expired, revoked or its user disabled."""
    if not token or len(token) > 128:
        return None
    row = session.scalars(
        select(DeskSession).where(DeskSession.token_hash == token_hash(token))
    ).first()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return None
    user = session.get(DeskAccount, row.user_id)
    if user is None or user.disabled:
        return None
    row.last_seen_at = now
    row.expires_at = min(now + policy.idle, row.created_at + policy.lifetime)
    return row, user


def revoke(session: Session, token: str, now: datetime) -> bool:
    """End the session of ``token`` (logout); whether a live one was ended."""
    result = session.execute(
        update(DeskSession)
        .where(DeskSession.token_hash == token_hash(token), DeskSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return bool(getattr(result, "rowcount", 0))


def end_sessions(session: Session, user_id: int, now: datetime) -> int:
    """Revoke every live session of user ``user_id``; how many were live."""
    result = session.execute(
        update(DeskSession)
        .where(
            DeskSession.user_id == user_id,
            DeskSession.revoked_at.is_(None),
            DeskSession.expires_at > now,
        )
        .values(revoked_at=now)
    )
    return int(getattr(result, "rowcount", 0))
