"""E-mail addresses: validation and normalisation with email-validator.

What is stored: the normalised form (local part as typed, domain lowercased and in Unicode), the
ASCII form with the domain as IDNA A-labels (what goes into RCPT TO), and a case-folded
de-duplication key. Local parts are case-sensitive by RFC 5321 §2.4, so the stored address keeps
their case, but in practice no provider treats them so, hence the case-insensitive key.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import idna


@dataclass(frozen=True)
class Address:
    """A valid, normalised address."""

    normalized: str  # "Ivan.Petrov@example.org", "chytach@прыклад.бел", "читатель@пример.рф"
    ascii_email: (
        str | None
    )  # "chytach@xn--80aiqesg1f.xn--90ais"; None when only SMTPUTF8 can carry it
    smtputf8: bool  # True when the local part is not ASCII (RFC 6531)
    dedupe_key: str  # case-folded normalised form: one subscriber per key
    ascii_domain: str  # A-label domain, used for per-domain throttling

    @property
    def mailbox_key(self) -> str:
        """The mailbox this address reaches (abuse limits): see :func:`mailbox_key_of`."""
        return mailbox_key_of(self.dedupe_key)


class AddressError(ValueError):
    """An address that is refused, with a stable ``code`` and a human-readable message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_address(
    raw: object,
    *,
    allow_smtputf8: bool = True,
    check_deliverability: bool = False,
    dns_timeout: float = 5.0,
    blocked_domains: Collection[str] = (),
) -> Address:
    """Validate and normalise ``raw``.

    ``allow_smtputf8`` is False when the configured relay does not offer SMTPUTF8 (RFC 6531); an
    internationalised local part is then refused, because it could never be delivered.
    ``check_deliverability`` looks the domain up in DNS (MX, then A/AAAA) with ``dns_timeout``
    seconds. ``blocked_domains`` refuses those domains and their subdomains (e.g. disposable mail).
    Local parts over 64 octets are accepted: RFC 5321 §4.5.3.1.1 is a limit real MTAs relax.

    Raises ``AddressError`` whose ``code`` names the rule broken (see :data:`SYNTAX_CODES`):
    ``not_a_string``, ``too_long`` (over 320 characters as typed, or over 254 octets, RFC 5321
    §4.5.3.1.3 with RFC 3696 erratum 1690), ``local_part_too_long`` (too long overall because of a
    local part over RFC 5321 §4.5.3.1.1's 64 octets), ``no_at_sign``, ``no_local_part``,
    ``no_domain``, ``domain_too_long``, ``domain_label_too_long``, ``domain_without_dot``,
    ``reserved_domain``, ``domain_ends_with_dot``, ``invalid_characters``, ``misplaced_dot``,
    ``smtputf8_unsupported``, ``blocked_domain``, ``undeliverable``; ``invalid`` for any other
    syntax error.
    """
    # imported here: feedback policy on the send path needs only dedupe_key_of, rarely called
    from email_validator import (
        EmailNotValidError,
        EmailSyntaxError,
        EmailUndeliverableError,
        validate_email,
    )

    if not isinstance(raw, str):
        raise AddressError("not_a_string", "the address must be a string")
    if len(raw) > 320:
        raise AddressError("too_long", f"the address is {len(raw)} characters long, over 320")
    text = raw.strip()
    try:
        result = validate_email(
            text,
            check_deliverability=check_deliverability,
            allow_smtputf8=allow_smtputf8,
            timeout=max(1, int(dns_timeout)) if check_deliverability else None,
        )
    except EmailUndeliverableError as exc:
        raise AddressError("undeliverable", str(exc)) from None
    except EmailSyntaxError as exc:
        code = _syntax_code(text, str(exc), allow_smtputf8)
        message = SMTPUTF8_REFUSED if code == "smtputf8_unsupported" else str(exc)
        raise AddressError(code, message) from None
    except EmailNotValidError as exc:
        raise AddressError("invalid", str(exc)) from None
    domain = result.domain.lower()
    if _is_blocked(domain, blocked_domains) or _is_blocked(result.ascii_domain, blocked_domains):
        raise AddressError("blocked_domain", f"addresses at {domain} are not accepted")
    return Address(
        normalized=result.normalized,
        ascii_email=result.ascii_email,
        smtputf8=result.smtputf8,
        dedupe_key=result.normalized.casefold(),
        ascii_domain=result.ascii_domain.lower(),
    )


# RFC 5322 §3.2.3 dot-atom of ASCII atext: a local part no validator refuses or rewrites.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")


class BulkParser:
    """:func:`parse_address` for many addresses (an import of a list): the same results and
    errors, about ten times faster on real lists, where a few domains recur.

    A plain ASCII dot-atom local part (at most 64 octets) needs no validation beyond its shape;
    its domain is validated once by :func:`parse_address` and remembered (up to ``cache_size``
    domains). Any other address — quoted or internationalised local parts, refused domains —
    goes through :func:`parse_address` itself, so its error is the one a signup would get.
    """

    def __init__(
        self,
        *,
        allow_smtputf8: bool = True,
        blocked_domains: Collection[str] = (),
        cache_size: int = 50_000,
    ) -> None:
        self._rules = {"allow_smtputf8": allow_smtputf8, "blocked_domains": blocked_domains}
        self._domains: dict[str, tuple[str, str] | None] = {}
        self._cache_size = cache_size

    def __call__(self, raw: object) -> Address:
        """An ``Address``; raises ``AddressError`` as :func:`parse_address` does."""
        if isinstance(raw, str) and len(raw) <= 320:
            local, at, domain = raw.strip().rpartition("@")
            if at and len(local) <= 64 and _DOT_ATOM.match(local):
                forms = self._domain(domain)
                if forms is not None:
                    normalized = f"{local}@{forms[0]}"
                    return Address(
                        normalized=normalized,
                        ascii_email=f"{local}@{forms[1]}",
                        smtputf8=False,
                        dedupe_key=normalized.casefold(),
                        ascii_domain=forms[1],
                    )
        return parse_address(raw, **self._rules)  # type: ignore[arg-type]

    def _domain(self, domain: str) -> tuple[str, str] | None:
        """(Unicode, A-label) forms of a valid domain, None for one refused."""
        if domain not in self._domains:
            if len(self._domains) >= self._cache_size:
                self._domains.clear()
            try:
                probe = parse_address(f"a@{domain}", **self._rules)  # type: ignore[arg-type]
                self._domains[domain] = (probe.normalized[2:], probe.ascii_domain)
            except AddressError:
                self._domains[domain] = None
        return self._domains[domain]


SMTPUTF8_REFUSED = (
    "this address has non-ASCII characters before the @-sign; it can only be delivered with "
    "SMTPUTF8 (RFC 6531), which our mail relay does not offer"
)


def load_blocked_domains(path: str | Path) -> frozenset[str]:
    """Domains from a file, one a line (``#`` starts a comment), lowercased and in both forms
    (Unicode and IDNA A-labels) so either spelling in the file matches. ``""`` gives none.

    Raises ``OSError`` if the file cannot be read.
    """
    if not path:
        return frozenset()
    domains: set[str] = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        domain = line.split("#", 1)[0].strip().lower().rstrip(".")
        if not domain:
            continue
        domains.add(domain)
        try:
            domains.add(idna.encode(domain, uts46=True).decode("ascii"))
            domains.add(idna.decode(domain))
        except idna.IDNAError:
            pass  # not a valid IDN: kept as written
    return frozenset(domains)


SYNTAX_CODES: tuple[tuple[str, str], ...] = (
    # (a fragment of email-validator 2.x's message, our code); first match wins
    ("too long before the @-sign", "local_part_too_long"),
    ("too long after the @-sign", "domain_too_long"),
    ("periods cannot be separated by so many characters", "domain_label_too_long"),
    ("email address is too long", "too_long"),
    ("must have an @-sign", "no_at_sign"),
    ("something before the @-sign", "no_local_part"),
    ("something after the @-sign", "no_domain"),
    ("It should have a period", "domain_without_dot"),
    ("special-use or reserved name", "reserved_domain"),
    ("not within a valid top-level domain", "reserved_domain"),
    ("two periods in a row", "misplaced_dot"),
    ("start with a period", "misplaced_dot"),
    ("end with a period", "misplaced_dot"),
    ("invalid character", "invalid_characters"),
    ("unsafe characters", "invalid_characters"),
)
"""How a syntax error of email-validator becomes a refusal code that names the rule."""


def _syntax_code(text: str, message: str, allow_smtputf8: bool) -> str:
    if text.endswith("."):
        return "domain_ends_with_dot"
    if not allow_smtputf8 and "Internationalized characters before the @-sign" in message:
        return "smtputf8_unsupported"
    for fragment, code in SYNTAX_CODES:
        if fragment in message:
            if code == "too_long" and len(text.rpartition("@")[0].encode()) > 64:
                return "local_part_too_long"  # tolerated alone (case a09), not at this length
            return code
    return "invalid"


_DOTLESS_PROVIDERS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}
"""Domains whose provider ignores dots in the local part (Gmail's help: "Dots don't matter in
Gmail addresses"), each with the canonical domain of that mailbox."""

_YANDEX_DOMAINS = frozenset(
    {"yandex.ru", "yandex.by", "yandex.kz", "yandex.ua", "yandex.com", "ya.ru", "narod.ru"}
)
"""Yandex Mail: every one of these domains reaches the same mailbox, and a login's dots and
hyphens are interchangeable (Yandex Help, "Mail aliases")."""


def mailbox_key_of(dedupe_key: str) -> str:
    """The mailbox that a de-duplication key reaches, for abuse limits only (never for storing or
    sending): case-folded, a ``+tag`` removed (RFC 5233 subaddressing, which nearly every provider
    honours), and where the provider is known to do so, dots ignored (Gmail) or dots, hyphens
    and domain aliases merged (Yandex). Two addresses with one key are one inbox to bomb.

    ``"Target+1@GMAIL.com"`` -> ``"target@gmail.com"``; never raises.
    """
    local, at, domain = dedupe_key.casefold().rpartition("@")
    if not at:
        return dedupe_key.casefold()
    if not local.startswith('"'):
        local = local.split("+", 1)[0] or local
    if domain in _DOTLESS_PROVIDERS:
        return f"{local.replace('.', '')}@{_DOTLESS_PROVIDERS[domain]}"
    if domain in _YANDEX_DOMAINS:
        return f"{local.replace('-', '.')}@yandex.ru"
    return f"{local}@{domain}"


def _is_blocked(domain: str, blocked: Collection[str]) -> bool:
    parts = domain.split(".")
    return any(".".join(parts[i:]) in blocked for i in range(len(parts)))


def dedupe_key_of(address: str) -> str:
    """The de-duplication key of ``address``; an address email-validator refuses (e.g. from an
    old import) is case-folded as it is. Never raises."""
    try:
        return parse_address(address).dedupe_key
    except ValueError:
        return address.strip().casefold()


# The major mail providers, by the domains their readers use: a subscriber's stored ``domain``
# is the provider's name here, or "other". The reader's own domain (a small company, a
# university) would narrow them down to a handful of people, so it is never stored; throttling
# takes the real domain from the address at send time (``recipient_domain``).
PROVIDER_BUCKETS: dict[str, str] = {
    **dict.fromkeys(("gmail.com", "googlemail.com"), "gmail.com"),
    **dict.fromkeys(("yandex.ru", "yandex.by", "yandex.com", "yandex.kz", "ya.ru"), "yandex.ru"),
    **dict.fromkeys(("mail.ru", "bk.ru", "inbox.ru", "list.ru", "internet.ru"), "mail.ru"),
    **dict.fromkeys(("outlook.com", "hotmail.com", "live.com", "msn.com"), "outlook.com"),
    **dict.fromkeys(("icloud.com", "me.com", "mac.com"), "icloud.com"),
    **dict.fromkeys(("yahoo.com", "ymail.com"), "yahoo.com"),
    **dict.fromkeys(("proton.me", "protonmail.com", "pm.me"), "proton.me"),
    "tut.by": "tut.by",
    "rambler.ru": "rambler.ru",
    "gmx.de": "gmx.de",
    "gmx.net": "gmx.de",
    "web.de": "web.de",
    "ukr.net": "ukr.net",
}
OTHER_PROVIDER = "other"


def provider_bucket(ascii_domain: str) -> str:
    """The stored ``domain`` of an address at ``ascii_domain`` (A-label, any case): the major
    provider's name from ``PROVIDER_BUCKETS``, else ``"other"``."""
    return PROVIDER_BUCKETS.get(ascii_domain.strip().lower().rstrip("."), OTHER_PROVIDER)


def recipient_domain(ascii_email: str | None, email: str) -> str:
    """The A-label domain mail to this address is throttled by, from the decrypted address
    (``ascii_email`` when there is one, else the Unicode ``email``, IDNA-encoded, UTS #46).
    Never raises: an undecodable domain is returned lowercased as it is."""
    domain = (ascii_email or email).rpartition("@")[2].lower()
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode()
    except idna.IDNAError:
        return domain
