"""What a piece of feedback means: the classes and reasons a postmaster would give it.

Everything that comes back about a delivery (an SMTP reply at send time, a DSN, an ARF report, a
provider webhook) is reduced to one :class:`Classification`. The rules, in order of authority:

1. the RFC 3463 enhanced status code (``5.1.1``; ``5.1.10`` is kept whole);
2. the RFC 3464 ``Action`` (``delayed`` is a warning, never a bounce);
3. the diagnostic text, English and Russian, last.

Text may only *soften* what a specific status says (a ``5.1.1`` whose text says "mailbox full" or
"listed on a blocklist" is not a dead address); it never hardens one. A 5xx is not a hard bounce by
itself: full mailboxes (``5.2.2``) and sender-side blocks (``5.7.x``) are permanent replies about
a temporary condition or about us, and suppressing on them loses valid readers.

A refusal about **our sender** is a policy block whatever its code (:func:`sender_side_reason`):
RFC 3463 puts sender-address faults at X.1.7/X.1.8 (§3.2) and security or policy at X.7.x (§3.8),
but receivers send "550 5.1.1 Sender address rejected", "5.1.0 sender verify failed" or
"5.6.0 refused by acceptable use policy" as well. So text that names our side (the sender
address or domain, the envelope sender, SPF/DKIM/DMARC of our domain, our IP's reputation or a
blocklist, a spam-content or acceptable-use policy) decides before the code: it is never a bounce
counted against the reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class FeedbackKind(StrEnum):
    """The class of a feedback event; each decides one policy action."""

    HARD_BOUNCE = "hard_bounce"  # the address is invalid: suppress at once
    SOFT_BOUNCE = "soft_bounce"  # temporary condition on the reader's side: count, suppress after N
    POLICY_BLOCK = (
        "policy_block"  # refused because of us (IP, content, auth): alert, never suppress
    )
    COMPLAINT = (
        "complaint"  # reader marked the mail as spam (ARF abuse/fraud): unsubscribe + suppress
    )
    AUTO_REPLY = "auto_reply"  # vacation or other RFC 3834 response: a person, not a failure
    DELAYED = "delayed"  # the MTA is still trying (Action: delayed, 4xx): not a bounce
    UNSUBSCRIBE = "unsubscribe"  # explicit request to leave the newsletter
    DMARC_REPORT = (
        "dmarc_report"  # auth-failure report: about the domain, says nothing of the reader
    )
    UNKNOWN = "unknown"  # nothing we can act on (human mail, success notices, unreadable input)


class Reason(StrEnum):
    """Why, in one word a metric or an operator can group by."""

    USER_UNKNOWN = "user_unknown"
    BAD_DOMAIN = "bad_domain"
    BAD_ADDRESS_SYNTAX = "bad_address_syntax"
    MAILBOX_DISABLED = "mailbox_disabled"
    MAILBOX_MOVED = "mailbox_moved"
    SUPPRESSED_BY_PROVIDER = "suppressed_by_provider"  # the ESP refuses it after earlier bounces
    MAILBOX_FULL = "mailbox_full"
    MAILBOX_UNAVAILABLE = "mailbox_unavailable"  # "550 mailbox unavailable": no reason given
    MAIL_SYSTEM_ERROR = "mail_system_error"
    NETWORK_ERROR = "network_error"
    PROTOCOL_ERROR = "protocol_error"
    DELIVERY_EXPIRED = "delivery_expired"  # the remote MTA gave up retrying a transient failure
    TEMPORARY_FAILURE = "temporary_failure"
    GREYLISTED = "greylisted"
    RATE_LIMITED = "rate_limited"
    SENDER_BLOCKED = "sender_blocked"  # our IP or domain is on a blocklist / has poor reputation
    CONTENT_REJECTED = "content_rejected"
    MESSAGE_TOO_LARGE = "message_too_large"
    AUTHENTICATION_FAILED = "authentication_failed"  # SPF/DKIM/DMARC/reverse DNS of our mail
    SENDER_ADDRESS_REJECTED = "sender_address_rejected"
    RELAY_DENIED = "relay_denied"
    UNCLASSIFIED = "unclassified"  # a failure with no usable status or text
    DELIVERED = "delivered"  # success notices (Action: delivered/relayed/expanded, 2.x.x)
    ABUSE = "abuse"
    FRAUD = "fraud"
    AUTH_FAILURE = "auth_failure"
    DMARC_AGGREGATE = "dmarc_aggregate"
    NOT_SPAM = "not_spam"
    OUT_OF_OFFICE = "out_of_office"
    AUTO_REPLIED = "auto_replied"
    LIST_UNSUBSCRIBE = "list_unsubscribe"
    OTHER_FEEDBACK = "other_feedback"  # ARF virus/other: recorded, no action
    HUMAN_MESSAGE = (
        "human_message"  # a person wrote to the bounce address: forwarded, never acted on
    )


@dataclass(frozen=True)
class Classification:
    """The verdict on one piece of feedback.

    ``counts_toward_invalid_address`` says whether the event is evidence that the address itself
    is undeliverable; only hard bounces are. Soft bounces still count toward the N-in-D-days rule.
    """

    kind: FeedbackKind
    reason: str | None
    counts_toward_invalid_address: bool

    @property
    def is_bounce(self) -> bool:
        """True for hard, soft and policy bounces (a delivery that failed), False otherwise."""
        return self.kind in BOUNCE_KINDS


BOUNCE_KINDS = (FeedbackKind.HARD_BOUNCE, FeedbackKind.SOFT_BOUNCE, FeedbackKind.POLICY_BLOCK)
"""The kinds that mean a delivery failed (the one definition; policy and dashboard import it)."""

_HARD_REASONS = frozenset(
    {
        Reason.USER_UNKNOWN,
        Reason.BAD_DOMAIN,
        Reason.BAD_ADDRESS_SYNTAX,
        Reason.MAILBOX_DISABLED,
        Reason.MAILBOX_MOVED,
        Reason.SUPPRESSED_BY_PROVIDER,
    }
)
_POLICY_REASONS = frozenset(
    {
        Reason.SENDER_BLOCKED,
        Reason.CONTENT_REJECTED,
        Reason.MESSAGE_TOO_LARGE,
        Reason.AUTHENTICATION_FAILED,
        Reason.SENDER_ADDRESS_REJECTED,
        Reason.RELAY_DENIED,
        Reason.RATE_LIMITED,
    }
)
_TRANSIENT_REASONS = frozenset({Reason.GREYLISTED, Reason.RATE_LIMITED, Reason.TEMPORARY_FAILURE})
# Text may override a specific status only toward these (never toward a hard bounce).
_SOFTENING_REASONS = frozenset({Reason.MAILBOX_FULL, Reason.SENDER_BLOCKED})

# RFC 3463 §2: class "." subject "." detail, subject and detail 1-3 digits. The look-arounds keep
# IP addresses (10.4.4.7) and version numbers out, and keep "5.1.10" whole.
_ENHANCED = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\w|\.\d)")
_REPLY_CODE = re.compile(r"(?<![\w.])([245][0-5]\d)(?=[ \-]|$)")

# RFC 3463 subject.detail → reason for permanent (5.x.x) status codes.
_PERMANENT_BY_CODE: dict[str, Reason] = {
    "1.1": Reason.USER_UNKNOWN,
    "1.2": Reason.BAD_DOMAIN,
    "1.3": Reason.BAD_ADDRESS_SYNTAX,
    "1.4": Reason.MAILBOX_UNAVAILABLE,  # ambiguous address: not proof it is dead
    "1.6": Reason.MAILBOX_MOVED,
    "1.7": Reason.SENDER_ADDRESS_REJECTED,
    "1.8": Reason.SENDER_ADDRESS_REJECTED,
    "1.10": Reason.USER_UNKNOWN,  # RFC 7505 null MX; Exchange Online uses it for "not found"
    "2.1": Reason.MAILBOX_DISABLED,
    "2.2": Reason.MAILBOX_FULL,
    "2.3": Reason.MESSAGE_TOO_LARGE,
    "2.4": Reason.MAIL_SYSTEM_ERROR,
    "3.1": Reason.MAIL_SYSTEM_ERROR,
    "3.2": Reason.MAIL_SYSTEM_ERROR,
    "3.3": Reason.CONTENT_REJECTED,
    "3.4": Reason.MESSAGE_TOO_LARGE,
    "3.5": Reason.MAIL_SYSTEM_ERROR,
    "4.1": Reason.NETWORK_ERROR,
    "4.2": Reason.NETWORK_ERROR,
    "4.3": Reason.NETWORK_ERROR,
    "4.4": Reason.BAD_DOMAIN,  # unable to route: no MX/A for the domain
    "4.6": Reason.MAIL_SYSTEM_ERROR,
    "4.7": Reason.DELIVERY_EXPIRED,
    "7.8": Reason.AUTHENTICATION_FAILED,
    "7.20": Reason.AUTHENTICATION_FAILED,  # RFC 7372: DKIM
    "7.21": Reason.AUTHENTICATION_FAILED,
    "7.22": Reason.AUTHENTICATION_FAILED,
    "7.23": Reason.AUTHENTICATION_FAILED,  # SPF
    "7.24": Reason.AUTHENTICATION_FAILED,
    "7.25": Reason.AUTHENTICATION_FAILED,  # reverse DNS
    "7.26": Reason.AUTHENTICATION_FAILED,  # multiple auth failures / DMARC
    "7.27": Reason.SENDER_ADDRESS_REJECTED,  # RFC 7505: sender domain has null MX
}
# Subjects whose codes say "something failed" without saying what: the text decides.
_SUBJECT_DEFAULT: dict[str, Reason] = {
    "1": Reason.MAILBOX_UNAVAILABLE,
    "2": Reason.MAILBOX_UNAVAILABLE,
    "3": Reason.MAIL_SYSTEM_ERROR,
    "4": Reason.NETWORK_ERROR,
    "5": Reason.PROTOCOL_ERROR,
    "6": Reason.CONTENT_REJECTED,
    "7": Reason.SENDER_BLOCKED,
}

# Diagnostic phrases, most specific first. Russian forms cover mail.ru, Yandex and Exim/Postfix
# translations; "[её]" because providers write both.
_PHRASES: tuple[tuple[Reason, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern, re.IGNORECASE))
    for reason, pattern in (
        (
            Reason.MAILBOX_FULL,
            r"mailbox (?:is )?full|full mailbox|over ?quota|quota (?:exceeded|exceed)|"
            r"exceeded (?:the )?(?:storage|quota)|out of storage|insufficient (?:storage|disk)|"
            r"mailbox size limit|"
            r"storage space|no space left|переполнен|превыш\w* (?:квот|лимит|размер)|"
            r"недостаточно места|нет свободного места|квота",
        ),
        (
            Reason.SENDER_BLOCKED,
            r"block ?list|black ?list|spamhaus|spamcop|barracuda|sorbs|\bu?rbl\b|dnsbl|"
            r"listed (?:on|in|at)|poor reputation|reputation|ip (?:address )?(?:is )?blocked|"
            r"blocked (?:by|due|because|using)|sending (?:ip|network)|\(S3150\)|"
            r"ч[её]рн\w* спис|репутаци|заблокирован\w* (?:ip|адрес отправ)",
        ),
        (
            Reason.AUTHENTICATION_FAILED,
            r"\bspf\b|\bdkim\b|\bdmarc\b|reverse dns|\bptr\b|unauthenticated|not authenticated",
        ),
        (
            Reason.CONTENT_REJECTED,
            r"spam|virus|malware|content (?:rejected|policy|restriction|filter)|message content|"
            r"phishing|спам|вирус",
        ),
        (Reason.MESSAGE_TOO_LARGE, r"message (?:size|too (?:big|large))|too large|слишком больш"),
        (Reason.GREYLISTED, r"gr[ea]y ?list"),
        (
            Reason.RATE_LIMITED,
            r"rate limit|too many (?:messages|connections|recipients)|receiving mail at a rate|"
            r"throttl|try again later|temporarily deferred|слишком много",
        ),
        (
            Reason.BAD_DOMAIN,
            r"host (?:or domain name )?not found|"
            r"domain (?:not found|does not exist|name not found)|"
            r"no mx|null mx|name service error|unrouteable mail domain|no such domain|"
            r"домен\w* не (?:найден|существует)",
        ),
        (
            Reason.MAILBOX_DISABLED,
            r"account (?:is |has been )?(?:disabled|deactivated|inactive|suspended|locked)|"
            r"mailbox (?:is )?(?:disabled|inactive|deactivated)|"
            r"(?:ящик|уч[её]тн\w+ запис\w*) (?:отключ|заблокирован|неактив)",
        ),
        (
            Reason.USER_UNKNOWN,
            r"user unknown|unknown (?:user|recipient|local.?part|mailbox)|no such (?:user|mailbox|"
            r"recipient|address)|(?:user|recipient|mailbox|address|account) (?:\w+ )?(?:not found|"
            r"does ?n[o']t exist|unknown)|does not exist|doesn't exist|not exist|"
            r"invalid (?:recipient|mailbox|address)|recipientnotfound|no mailbox|"
            r"unrouteable address|not our customer|"
            r"mailbox unavailable or not local|"
            r"пользовател\w* не (?:найден|существует)|нет такого (?:пользователя|адресата|ящика)|"
            r"(?:адресат|получател\w*|ящик\w*|адрес\w*) не (?:найден|существует)|"
            r"не существует|неизвестн\w* (?:пользовател|адресат|получател)",
        ),
        (
            Reason.RELAY_DENIED,
            r"relay(?:ing)? (?:access )?(?:denied|not permitted)|not permitted to relay",
        ),
        (Reason.MAILBOX_UNAVAILABLE, r"mailbox unavailable|mailbox not available|ящик недоступ"),
        (
            Reason.DELIVERY_EXPIRED,
            r"retry time(?:out)? (?:not reached|exceeded)|message expired|too long in queue|"
            r"delivery time expired|could not be delivered within",
        ),
        (
            Reason.NETWORK_ERROR,
            r"connection (?:timed out|refused|reset)|timed out|no route to host|"
            r"network is unreachable",
        ),
    )
)


# Text about our side of the mail, most specific first. Each names *who* is at fault (the sender,
# the sending domain or IP, the message's content under a policy) and a refusal; words that only
# name a refusal ("rejected", "denied") say nothing of whom it is about and are not here.
_WHO = (
    r"(?:envelope[- ]?)?sender|mail[- ]?from|envelope[- ]from|from[- ](?:address|domain|header)|"
    r"return[- ]path|originator|sending (?:domain|ip|host|server|address)|"
    r"your (?:domain|ip|server|host|mail server|address|organi[sz]ation)|"
    r"отправител\w*"
)
_REFUSED = (
    r"reject|refus|den(?:y|ied)|block|ban(?:ned)?\b|black ?list|not (?:allowed|permitted|accepted|"
    r"authori[sz]ed|verified|trusted)|unverif|verif\w* fail|fail\w* verif|invalid|unknown|"
    r"does ?n[o']t exist|not exist|fail|polic|spoof|forg|not found|"
    r"отклон|запрещ|заблокир|не разреш|не прош|не существ|политик"
)
# Words of one clause: a full stop ends what "sender" can be the subject of.
_GAP = r"[\s:,;<>()\"'\[\]]+"
_WORD = r"[\w.@+-]+"
_SENDER_PHRASES: tuple[tuple[Reason, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern, re.IGNORECASE))
    for reason, pattern in (
        (
            Reason.AUTHENTICATION_FAILED,
            r"\b(?:spf|dkim|dmarc)\b|sender policy framework|domain-?based message auth|"
            r"reverse dns|\bptr\b|not authenticated|unauthenticated|authentication (?:fail|requir)",
        ),
        (
            Reason.SENDER_BLOCKED,
            r"block ?list|black ?list|spamhaus|spamcop|barracuda|sorbs|\bu?rbl\b|dnsbl|"
            r"listed (?:on|in|at)|reputation|\(S3150\)|ч[её]рн\w* спис|репутаци|"
            rf"(?:\bip|client host|network|{_WHO}){_GAP}(?:{_WORD}{_GAP}){{0,3}}?"
            r"(?:blocked|banned|blacklisted)|"
            rf"(?:blocked|banned|blacklisted){_GAP}(?:{_WORD}{_GAP})??(?:{_WHO})",
        ),
        (
            Reason.CONTENT_REJECTED,
            r"acceptable[- ]use|\baup\b|usage (?:guidelines|policy)|\bspam(?!haus|cop)|"
            r"bulk mail policy|unsolicited|content (?:rejected|policy|restriction|filter)|"
            r"message content|phishing|virus|malware|спам|вирус",
        ),
        (
            Reason.SENDER_ADDRESS_REJECTED,
            rf"(?:{_WHO}){_GAP}(?:{_WORD}{_GAP}){{0,4}}?(?:{_REFUSED})|"
            # "rejected by sender policy"; one word at most between, so that the Exim subject
            # "Mail delivery failed: returning message to sender" is not read as one
            rf"(?:{_REFUSED})\w*{_GAP}(?:{_WORD}{_GAP})??(?:{_WHO})",
        ),
    )
)


def sender_side_reason(text: str | None) -> Reason | None:
    """The reason, when ``text`` (a reply or diagnostic) says the refusal is about *our* side:
    authentication of our domain, our content under a policy, our IP or domain blocked, our sender
    address refused (RFC 3463 §3.2 X.1.7/X.1.8 and §3.8 X.7.x, however the code is written);
    None when it does not."""
    if not text:
        return None
    for reason, pattern in _SENDER_PHRASES:
        if pattern.search(text):
            return reason
    return None


def enhanced_status(text: str | None) -> str | None:
    """The first RFC 3463 enhanced status code in ``text`` (``"5.1.10"`` stays whole), or None."""
    if not text:
        return None
    match = _ENHANCED.search(text)
    return ".".join(match.groups()) if match else None


def reason_from_text(text: str | None) -> Reason | None:
    """The reason a diagnostic text gives in English or Russian, or None if it names none."""
    if not text:
        return None
    for reason, pattern in _PHRASES:
        if pattern.search(text):
            return reason
    return None


def classify_status(
    status: str | None, diagnostic: str | None, *, action: str | None = None
) -> Classification:
    """Classify one recipient's delivery status.

    ``status`` is an RFC 3464 ``Status`` value (RFC 3463 code, comments allowed), ``diagnostic`` the
    ``Diagnostic-Code`` or any reply text, ``action`` the RFC 3464 ``Action`` (failed, delayed,
    delivered, relayed, expanded). Each may be None. Never raises.

    A more specific code inside the diagnostic refines a ``X.0.0`` status. Without any enhanced code
    the basic SMTP reply code (RFC 5321 §4.2) gives the class. ``Action: delayed`` is always
    DELAYED; a class-4 status with ``Action: failed`` means the remote MTA gave up on a transient
    failure: a soft bounce.
    """
    verb = (action or "").strip().lower().split(" ", 1)[0].rstrip(";") or None
    code = _best_code(status, diagnostic)
    text = diagnostic or ""
    if verb in {"delivered", "relayed", "expanded"} or (code is not None and code[0] == "2"):
        return Classification(FeedbackKind.UNKNOWN, Reason.DELIVERED, False)
    klass = code[0] if code else _reply_class(text)
    if verb == "delayed" or (klass == "4" and verb != "failed"):
        return _transient(code, text)
    if klass == "4":
        return _gave_up(code, text)
    if klass == "5" or verb in {"failed", "error"}:
        return _permanent(code, text)
    # No code and no action: only the words are left to go on.
    if (about_us := _about_us(None, text)) is not None:
        return about_us
    reason = reason_from_text(text)
    if reason is None:
        return Classification(FeedbackKind.UNKNOWN, Reason.UNCLASSIFIED, False)
    if reason in _TRANSIENT_REASONS:
        return Classification(FeedbackKind.DELAYED, reason, False)
    return _from_reason(reason)


def classify_smtp_reply(code: int, text: str) -> Classification:
    """Classify an SMTP reply received while sending (RFC 5321 §4.2, RFC 3463).

    ``code`` is the three-digit reply code, ``text`` the reply text (with or without the enhanced
    code in front). 2xx is UNKNOWN/delivered, 4xx is DELAYED (transient: retry), 5xx is decided by
    the enhanced code and text: ``550 5.1.1`` → HARD_BOUNCE user_unknown, ``552 5.2.2`` →
    SOFT_BOUNCE mailbox_full, ``550 5.7.1`` → POLICY_BLOCK. Never raises.
    """
    status = enhanced_status(text)
    diagnostic = f"{code} {text}"
    if 200 <= code < 300:
        return Classification(FeedbackKind.UNKNOWN, Reason.DELIVERED, False)
    if 400 <= code < 500:
        return _transient(status, diagnostic)
    if status is None and code == 552:
        # RFC 5321: "552 Requested mail action aborted: exceeded storage allocation".
        return _soft(Reason.MAILBOX_FULL)
    if status is None and code in {521, 556}:
        return _hard(Reason.BAD_DOMAIN)  # RFC 7504: the domain does not accept mail
    return _permanent(status if 500 <= code < 600 else None, diagnostic)


def _best_code(status: str | None, diagnostic: str | None) -> str | None:
    code = enhanced_status(status)
    inner = enhanced_status(diagnostic)
    if code is None:
        return inner
    if inner and inner[0] == code[0] and code.endswith(".0") and not inner.endswith(".0"):
        return inner  # "Status: 5.0.0" with "550 5.1.1 user unknown" in the diagnostic
    return code


def _reply_class(text: str) -> str | None:
    match = _REPLY_CODE.search(text)
    return match.group(1)[0] if match else None


def _subject_detail(code: str | None) -> tuple[str | None, str | None]:
    if code is None:
        return None, None
    _, subject, detail = code.split(".")
    return subject, f"{subject}.{detail}"


def _transient(code: str | None, text: str) -> Classification:
    reason = reason_from_text(text)
    subject, key = _subject_detail(code)
    if key == "2.2":
        reason = Reason.MAILBOX_FULL
    elif reason is None or reason in _HARD_REASONS:
        reason = Reason.RATE_LIMITED if subject == "7" else Reason.TEMPORARY_FAILURE
    return Classification(FeedbackKind.DELAYED, reason, False)


def _gave_up(code: str | None, text: str) -> Classification:
    """Class 4 with Action: failed: the remote MTA expired the message; the address may be fine."""
    if (about_us := _about_us(code, text)) is not None:
        return about_us
    _, key = _subject_detail(code)
    if key == "2.2" or reason_from_text(text) == Reason.MAILBOX_FULL:
        return _soft(Reason.MAILBOX_FULL)
    return _soft(Reason.DELIVERY_EXPIRED)


def _about_us(code: str | None, text: str) -> Classification | None:
    """A policy block when the code (X.1.7, X.1.8) or the text puts the fault on our side."""
    _, key = _subject_detail(code)
    reason = sender_side_reason(text)
    if reason is None and key in {"1.7", "1.8"}:
        reason = Reason.SENDER_ADDRESS_REJECTED
    return Classification(FeedbackKind.POLICY_BLOCK, reason, False) if reason else None


def _permanent(code: str | None, text: str) -> Classification:
    if (about_us := _about_us(code, text)) is not None:
        return about_us
    subject, key = _subject_detail(code)
    from_text = reason_from_text(text)
    specific = _PERMANENT_BY_CODE.get(key or "")
    if specific is not None:
        if from_text in _SOFTENING_REASONS and specific in _HARD_REASONS:
            return _from_reason(from_text)
        if key == "1.10" and from_text == Reason.BAD_DOMAIN:
            return _hard(Reason.BAD_DOMAIN)
        return _from_reason(specific)
    if subject == "7":
        return _policy_from_text(from_text)
    if from_text is not None:
        if subject == "6" and from_text in _HARD_REASONS:
            return _from_reason(Reason.CONTENT_REJECTED)
        return _from_reason(from_text)
    default = _SUBJECT_DEFAULT.get(subject or "")
    return _from_reason(default) if default else _soft(Reason.UNCLASSIFIED)


def _policy_from_text(from_text: Reason | None) -> Classification:
    """5.7.x is about us (RFC 3463 §3.8): never let its text turn it into a dead address."""
    if from_text in _POLICY_REASONS:
        return Classification(FeedbackKind.POLICY_BLOCK, from_text, False)
    return Classification(FeedbackKind.POLICY_BLOCK, Reason.SENDER_BLOCKED, False)


def _from_reason(reason: Reason) -> Classification:
    if reason in _HARD_REASONS:
        return _hard(reason)
    if reason in _POLICY_REASONS:
        return Classification(FeedbackKind.POLICY_BLOCK, reason, False)
    if reason in {Reason.GREYLISTED, Reason.TEMPORARY_FAILURE}:
        return _soft(Reason.TEMPORARY_FAILURE)
    return _soft(reason)


def _hard(reason: Reason) -> Classification:
    return Classification(FeedbackKind.HARD_BOUNCE, reason, True)


def _soft(reason: Reason) -> Classification:
    return Classification(FeedbackKind.SOFT_BOUNCE, reason, False)


_FEEDBACK_TYPES: dict[str, Classification] = {
    "abuse": Classification(FeedbackKind.COMPLAINT, Reason.ABUSE, False),
    "fraud": Classification(FeedbackKind.COMPLAINT, Reason.FRAUD, False),
    "auth-failure": Classification(FeedbackKind.DMARC_REPORT, Reason.AUTH_FAILURE, False),
    "not-spam": Classification(FeedbackKind.UNKNOWN, Reason.NOT_SPAM, False),
}


def classify_feedback_type(
    feedback_type: str | None, *, missing_means_abuse: bool = False
) -> Classification:
    """Classify an ARF Feedback-Type (RFC 5965 §7.3, RFC 6591).

    ``abuse`` and ``fraud`` are complaints; ``auth-failure`` is a DMARC report (it concerns a
    message sent in our name, often a spoof, and must never unsubscribe anyone); ``not-spam``,
    ``virus``, ``other`` and unknown types are UNKNOWN. A missing type is UNKNOWN unless
    ``missing_means_abuse`` (providers such as SES report complaints without one).
    """
    value = (feedback_type or "").strip().lower()
    if not value and missing_means_abuse:
        value = "abuse"
    return _FEEDBACK_TYPES.get(
        value, Classification(FeedbackKind.UNKNOWN, Reason.OTHER_FEEDBACK, False)
    )
