"""The storage model: SQLAlchemy 2 typed tables for the newsletter and its ledger.

The database is the source of truth; queue messages only carry ids. Status columns are typed
with the enums of ``worker.states`` in Python but stored as plain strings (``StateColumn``; not
database enums) so that SQLite and PostgreSQL store them alike and a new state needs no migration.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from worker.safety import keyring
from worker.states import DeliveryState, SendStatus, SubscriberStatus

# BigInteger ids on PostgreSQL, INTEGER PRIMARY KEY (the rowid alias) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware UTC datetime")
        return (
            value.astimezone(UTC)
            if dialect.name != "sqlite"
            else value.astimezone(UTC).replace(tzinfo=None)
        )

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


E = TypeVar("E", bound=StrEnum)


class StateColumn(TypeDecorator[E], Generic[E]):
    """A state of one machine of ``worker.states``: the enum member in Python, its string value
    (``String(16)``) in the database. Binding a string that is no member raises ValueError."""

    impl = String(16)
    cache_ok = True

    def __init__(self, machine: type[E]) -> None:
        super().__init__()
        self.machine = machine

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.machine(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.machine(value)


class EncryptedText(TypeDecorator[str]):
    """A text that may hold a reader's address, sealed at rest (``safety.keyring``: AES-GCM under
    the process's data key, the column name as associated data). Python sees the plain text.

    Reading a value that does not open raises ``keyring.SealedValueError``; a plain-text value
    (a database not yet migrated by 0005) is refused the same way, so nothing is read unsealed.
    """

    impl = Text
    cache_ok = True

    def __init__(self, column: str) -> None:
        super().__init__()
        self.column = column

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else keyring.current().seal(value, self.column)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else keyring.current().open(value, self.column)


class EncryptedBytes(TypeDecorator[bytes]):
    """Bytes that may hold readers' addresses (stored inbound mail), sealed as ``EncryptedText``
    seals text."""

    impl = LargeBinary
    cache_ok = True

    def __init__(self, column: str) -> None:
        super().__init__()
        self.column = column

    def process_bind_param(self, value: bytes | None, dialect: Dialect) -> bytes | None:
        return None if value is None else keyring.current().seal_bytes(bytes(value), self.column)

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> bytes | None:
        return None if value is None else keyring.current().open_bytes(bytes(value), self.column)


class BlindIndex(TypeDecorator[str]):
    """The blind index of an address (``safety.keyring.Keyring.blind_index``): bound values that
    are canonical addresses (they hold an ``@``) are replaced by their HMAC, so
    ``Subscriber.email_key == address.dedupe_key`` compares indexes and the address never reaches
    the database. Values without ``@`` (an index already, an erased row's marker) pass as they
    are. Read back, the column gives the index, never the address."""

    impl = String(320)  # 64 hex digits; erased rows hold a longer "erased:…" marker
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or "@" not in value:
            return value
        return keyring.blind_index(value.casefold())  # idempotent on a dedupe key


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
    }


class Newsletter(Base):
    """A list people subscribe to; its profile (names, sender) comes from newsletter.yaml."""

    __tablename__ = "newsletter"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    default_language: Mapped[str] = mapped_column(String(16))
    profile: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]


class DataKeyCanary(Base):
    """A known text sealed under one data key: a process whose key does not open it refuses to
    start (``safety.data_keys.check_data_keys``). A key's row is deleted once ``newsletter keys
    rotate`` has moved every value off it."""

    __tablename__ = "data_key_canary"

    key_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class Subscriber(Base):
    """One normalised address with a language and a status."""

    __tablename__ = "subscriber"
    __table_args__ = (
        UniqueConstraint("newsletter_id", "email_key", name="uq_subscriber_newsletter_email_key"),
        Index("ix_subscriber_newsletter_status_id", "newsletter_id", "status", "id"),
        Index("ix_subscriber_confirmation_failed_at", "confirmation_failed_at"),  # dashboard
        Index("ix_subscriber_status_language", "status", "language"),  # dashboard: readers card
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id"))
    # normalised, domain in Unicode; sealed at rest
    email: Mapped[str] = mapped_column(EncryptedText("subscriber.email"))
    # the blind index of the case-folded address: the de-duplication and look-up key
    email_key: Mapped[str] = mapped_column(BlindIndex())
    # A-label form, sealed; None needs SMTPUTF8
    ascii_email: Mapped[str | None] = mapped_column(EncryptedText("subscriber.ascii_email"))
    # the provider bucket (gmail.com, mail.ru, … or "other"), never the reader's own domain;
    # throttling derives the real domain from the address at send time
    domain: Mapped[str] = mapped_column(String(255))
    language: Mapped[str] = mapped_column(String(16))
    status: Mapped[SubscriberStatus] = mapped_column(
        StateColumn(SubscriberStatus), default=SubscriberStatus.PENDING
    )
    confirm_nonce: Mapped[str | None] = mapped_column(String(64))  # single-use confirmation token
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]
    confirmation_sent_at: Mapped[datetime | None]
    # the relay's refusal of the last confirmation mail ("554 5.6.7 …"); cleared once one is sent
    confirmation_error: Mapped[str | None] = mapped_column(
        EncryptedText("subscriber.confirmation_error")
    )
    confirmation_failed_at: Mapped[datetime | None]

    consents: Mapped[list[Consent]] = relationship(back_populates="subscriber")


class Consent(Base):
    """The evidence of one signup and its confirmation (GDPR Art. 7(1): demonstrate consent)."""

    __tablename__ = "consent"
    __table_args__ = (
        # dashboard: signups and confirmations per day, from the index alone
        Index("ix_consent_signed_up_at", "signed_up_at", "method", "confirmed_at"),
        # dashboard: readers per source, from the import consents alone (index-only)
        Index("ix_consent_method_source", "method", "source", "subscriber_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscriber.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[str] = mapped_column(String(100), unique=True)
    signed_up_at: Mapped[datetime]
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    source: Mapped[str | None] = mapped_column(String(200))
    consent_version: Mapped[str | None] = mapped_column(String(100))
    language: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(32), default="double_opt_in")
    confirmed_at: Mapped[datetime | None]
    confirm_ip: Mapped[str | None] = mapped_column(String(64))
    confirm_user_agent: Mapped[str | None] = mapped_column(String(512))

    subscriber: Mapped[Subscriber] = relationship(back_populates="consents")


class SignupRefusal(Base):
    """A signup event that was refused, with its reason: refused events are recorded, never lost."""

    __tablename__ = "signup_refusal"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    event_id: Mapped[str | None] = mapped_column(String(100), index=True)
    received_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(EncryptedText("signup_refusal.detail"))
    # an invalid event as received, cut at 1 KB; else {}
    payload: Mapped[str] = mapped_column(EncryptedText("signup_refusal.payload"))


class Edition(Base):
    """One issue of the newsletter (e.g. 2024-W28), with content per language."""

    __tablename__ = "edition"
    __table_args__ = (UniqueConstraint("newsletter_id", "key", name="uq_edition_newsletter_key"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id"))
    key: Mapped[str] = mapped_column(String(64))
    period_start: Mapped[date | None] = mapped_column(Date)
    period_end: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    contents: Mapped[list[EditionContentRow]] = relationship(back_populates="edition")


class EditionContentRow(Base):
    """An edition's source content in one language (the parsed YAML, as JSON)."""

    __tablename__ = "edition_content"
    __table_args__ = (UniqueConstraint("edition_id", "language", name="uq_edition_content_lang"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("edition.id", ondelete="CASCADE"))
    language: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)

    edition: Mapped[Edition] = relationship(back_populates="contents")


class Rendition(Base):
    """An edition rendered for one language within a send: frozen when the send is planned."""

    __tablename__ = "rendition"
    __table_args__ = (UniqueConstraint("send_id", "language", name="uq_rendition_send_lang"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    send_id: Mapped[int] = mapped_column(ForeignKey("send.id", ondelete="CASCADE"))
    language: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(Text)
    preheader: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    rendered_at: Mapped[datetime]


class Send(Base):
    """One dispatch run of an edition."""

    __tablename__ = "send"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("edition.id"), index=True)
    status: Mapped[SendStatus] = mapped_column(
        StateColumn(SendStatus), default=SendStatus.SCHEDULED
    )
    batch_size: Mapped[int] = mapped_column(Integer, default=100)
    planned_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # When a scheduled send is due (UTC) and the zone its time was given in (for display; the
    # instant alone decides). None: planned as soon as it is created.
    scheduled_for: Mapped[datetime | None]
    timezone: Mapped[str | None] = mapped_column(String(64))
    # Who is planned: "all" confirmed readers, or only "new" ones (no delivery of this edition
    # in an earlier send). worker.sending.sends.Audience.
    audience: Mapped[str] = mapped_column(String(8), default="all")


class SendSlot(Base):
    """A newsletter's standing weekly send time ("monday 09:00 Europe/Minsk"): at each firing the
    newest loaded edition not yet sent is sent.

    ``next_at`` (UTC) is the next firing, computed in the slot's local time and then converted,
    so a daylight-saving change does not move the local time. A scheduler fires the slot by moving
    ``next_at`` on with a compare-and-set, so two schedulers fire it once.
    """

    __tablename__ = "send_slot"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id"), unique=True)
    weekday: Mapped[int] = mapped_column(Integer)  # 0 = Monday … 6 = Sunday (datetime.weekday)
    local_time: Mapped[str] = mapped_column(String(5))  # "HH:MM"
    timezone: Mapped[str] = mapped_column(String(64))  # an IANA zone name
    next_at: Mapped[datetime]
    created_at: Mapped[datetime]


class Delivery(Base):
    """One recipient's copy of one edition within a send, and what became of it (the ledger row)."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("send_id", "subscriber_id", name="uq_delivery_send_subscriber"),
        # (send_id, state) queries (due batches, unfinished deliveries) use the prefix of
        # ix_delivery_send_state_sent_at: a separate (send_id, state) index only cost every
        # planned row and every state change one more index entry
        # only leased rows (sending, submitting): a planned row is not entered, so planning
        # writes one index entry per delivery less; expiry asks ``lease_until < now``, which
        # implies the predicate
        Index(
            "ix_delivery_state_lease",
            "state",
            "lease_until",
            postgresql_where=text("lease_until IS NOT NULL"),
            sqlite_where=text("lease_until IS NOT NULL"),
        ),
        Index("ix_delivery_subscriber", "subscriber_id"),
        Index("ix_delivery_send_funnel", "send_id", "language", "domain", "state"),  # dashboard
        Index("ix_delivery_send_state_sent_at", "send_id", "state", "sent_at"),  # dashboard: rate
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    send_id: Mapped[int] = mapped_column(ForeignKey("send.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscriber.id", ondelete="CASCADE"))
    language: Mapped[str] = mapped_column(String(16))
    domain: Mapped[str] = mapped_column(String(255))
    state: Mapped[DeliveryState] = mapped_column(
        StateColumn(DeliveryState), default=DeliveryState.QUEUED
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    first_attempt_at: Mapped[datetime | None]
    reply_code: Mapped[int | None] = mapped_column(Integer)
    reply_text: Mapped[str | None] = mapped_column(EncryptedText("delivery.reply_text"))
    sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]


class SendTally(Base):
    """What a final (finished or cancelled) send's ledger can no longer change, counted once so
    that the operators' dashboard does not aggregate a million deliveries on every view: the
    deliveries per state, per (language, state) and per (domain, state), and the messages
    accepted per second. Written by ``worker.operators.dashboard`` on the first view of the final
    send; valid while the send keeps the ``status`` and ``finished_at`` it was counted at (a
    reopened send, ``retry-unknown``, is counted again when it is final again)."""

    __tablename__ = "send_tally"

    send_id: Mapped[int] = mapped_column(
        Id, ForeignKey("send.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[SendStatus] = mapped_column(StateColumn(SendStatus))
    finished_at: Mapped[datetime | None]
    # {"states": {state: n}, "language": {language: {state: n}}, "domain": {domain: {state: n}},
    #  "sent_per_second": {unix second: n}}
    tally: Mapped[dict[str, Any]] = mapped_column(JSON)
    counted_at: Mapped[datetime]


class DashboardSnapshot(Base):
    """One of the dashboard's expensive aggregates (readers by status and language, signups per
    day, a live send's funnel, …) as computed at ``computed_at``, shared by every web process so
    that a view within ``NEWSLETTER_DASHBOARD_CACHE_SECONDS`` of it reads one row instead of
    counting a million (``worker.operators.snapshots``). A cache: deleting every row loses
    nothing."""

    __tablename__ = "dashboard_snapshot"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # e.g. "readers", "signups:30"
    computed_at: Mapped[datetime]
    value: Mapped[Any] = mapped_column(JSON)


class FeedbackEvent(Base):
    """Anything that came back about a delivery or a subscriber, recorded once per source event."""

    __tablename__ = "feedback_event"
    __table_args__ = (
        Index("ix_feedback_subscriber_kind", "subscriber_id", "kind", "occurred_at"),
        Index("ix_feedback_kind_occurred", "kind", "occurred_at"),  # dashboard: windows by kind
        Index("ix_feedback_delivery", "delivery_id"),  # dashboard: a send's feedback
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    source_event_id: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # worker.feedback.classification.FeedbackKind
    source: Mapped[str] = mapped_column(
        String(32)
    )  # smtp, dsn, arf, webhook:ses, one_click, page, mailto
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriber.id", ondelete="SET NULL"), index=True
    )
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("delivery.id", ondelete="SET NULL"))
    recipient: Mapped[str | None] = mapped_column(EncryptedText("feedback_event.recipient"))
    status_code: Mapped[str | None] = mapped_column(String(16))  # RFC 3463 enhanced status code
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(EncryptedText("feedback_event.detail"))
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime]
    inbound_message_id: Mapped[int | None] = mapped_column(
        ForeignKey("inbound_message.id", ondelete="SET NULL"), index=True
    )
    # What the policy did: suppressed, unsubscribed_and_suppressed, soft_counted, policy_alerted, …
    effect: Mapped[str | None] = mapped_column(String(32))
    # How the delivery was found: verp, provider, message_id, delivery_header, recipient, none
    attribution: Mapped[str | None] = mapped_column(String(16))


class Suppression(Base):
    """An address we must not mail, with a reason and the event that caused it.

    ``email_hash`` is a keyed hash of the de-duplication key, so an erased person stays suppressed
    without their address being kept. ``removed_at`` set means an operator lifted it (kept for
    audit).
    """

    __tablename__ = "suppression"
    __table_args__ = (Index("ix_suppression_hash_active", "email_hash", "removed_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64))
    # sealed; None after erasure or a hashed import
    email: Mapped[str | None] = mapped_column(EncryptedText("suppression.email"))
    reason: Mapped[str] = mapped_column(String(32))
    source_event_id: Mapped[int | None] = mapped_column(
        ForeignKey("feedback_event.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime]
    removed_at: Mapped[datetime | None]
    removed_reason: Mapped[str | None] = mapped_column(Text)


class InboundMessage(Base):
    """A raw message received at the bounce address, stored before it is parsed."""

    __tablename__ = "inbound_message"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    received_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(32))  # smtp, imap
    envelope_from: Mapped[str | None] = mapped_column(
        EncryptedText("inbound_message.envelope_from")
    )
    envelope_to: Mapped[str | None] = mapped_column(EncryptedText("inbound_message.envelope_to"))
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the raw bytes
    raw: Mapped[bytes] = mapped_column(EncryptedBytes("inbound_message.raw"))
    size: Mapped[int] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    parsed_at: Mapped[datetime | None]
    parse_error: Mapped[str | None] = mapped_column(Text)


class DeskAccount(Base):
    """A person who may log into the editors' desk (``worker.desk.accounts``): an ``editor`` or
    an ``operator``. ``password_hash`` is an argon2id PHC string; ``address`` is the user's own
    mail address for test sends, sealed like readers' addresses."""

    __tablename__ = "desk_user"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # worker.desk.accounts.Role
    password_hash: Mapped[str] = mapped_column(String(256))
    address: Mapped[str | None] = mapped_column(EncryptedText("desk_user.address"))
    created_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class DeskSession(Base):
    """One login to the desk. The browser holds a random id; only its SHA-256 is stored, so a
    copy of the database opens no session. Ends at ``expires_at`` (idle timeout, moved on by each
    request, never past the absolute lifetime from ``created_at``) or when ``revoked_at`` is set
    (logout, user removed or password reset)."""

    __tablename__ = "desk_session"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("desk_user.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class DeskAction(Base):
    """One line of the desk's action log (``worker.desk.audit``): who did what to which subject,
    when. Never holds a reader's address: subjects are edition keys, send ids, user names."""

    __tablename__ = "desk_action"
    __table_args__ = (Index("ix_desk_action_at", "at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    at: Mapped[datetime]
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
