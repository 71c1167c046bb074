"""Transactional mail (confirmation, welcome): rendered once per language, personalised per reader.

Not bulk mail: no List-Unsubscribe on a confirmation, and a newsletter unsubscribe does not block
it. Rendering a message costs about 10 ms (Jinja2, MJML validation, mjml-python); a signup flood
would spend the worker on it. So each message is rendered once per (message, language, newsletter
profile, shared values such as ``expires_hours``, template files' version) with placeholders for
the per-reader links (``%%CONFIRM_URL%%``, ``%%UNSUBSCRIBE_URL%%``, ``%%PREFERENCES_URL%%``, see
``worker.editions.placeholders``), as editions are, and kept with its encoded MIME parts in
:data:`TEMPLATES`; per reader only the links, the To, Date and Message-ID are filled in
(``worker.sending.mime.personalise``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from markupsafe import escape

from worker.editions.files import NewsletterProfile
from worker.editions.placeholders import CONFIRM_URL, PREFERENCES_URL, UNSUBSCRIBE_URL
from worker.editions.rendering import render_message, template_version
from worker.models import Subscriber
from worker.sending import identity
from worker.sending.composer import origin_of
from worker.sending.dkim import DkimSigner
from worker.sending.mime import MessageTemplate, origin_template, personalise
from worker.sending.ports import Mailer, SmtpOutcome

PERSONAL_LINKS = {
    "confirm_url": CONFIRM_URL,
    "unsubscribe_url": UNSUBSCRIBE_URL,
    "preferences_url": PREFERENCES_URL,
}
"""Context values that differ per reader: rendered as these placeholders, substituted per mail."""


@dataclass(frozen=True)
class PreparedMessage:
    """One transactional message in one language, ready to personalise: its encoded MIME parts
    (``template``) and the language it was rendered in (``language``, after fallbacks)."""

    template: MessageTemplate
    language: str


class PreparedMessages:
    """A bounded, thread-safe cache of :class:`PreparedMessage` (least recently used dropped
    beyond ``size``). Two threads missing the same key may both render: the result is the same."""

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, PreparedMessage] = OrderedDict()
        self._lock = threading.Lock()
        self.renders = 0  # how many times a message was rendered (tests, benchmarks)

    def get(self, key: Hashable, build: Callable[[], PreparedMessage]) -> PreparedMessage:
        """The entry of ``key``, built by ``build()`` on a miss (exceptions pass through)."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        prepared = build()
        with self._lock:
            self.renders += 1
            self._entries[key] = prepared
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return prepared

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


TEMPLATES = PreparedMessages()
"""This process's prepared transactional messages."""


def prepare_message(
    name: str,
    language: str,
    context: dict[str, Any],
    *,
    profile: NewsletterProfile,
    public_url: str,
    message_id_domain: str,
    slug: str,
    fallbacks: tuple[str, ...] = (),
    cache: PreparedMessages = TEMPLATES,
) -> PreparedMessage:
    """Message ``name`` for readers of ``language`` with ``context``'s shared values, the keys of
    :data:`PERSONAL_LINKS` present in ``context`` rendered as their placeholders; from ``cache``
    unless the newsletter, a shared value or a template file changed. Raises
    ``worker.editions.rendering.TemplateProblem`` as ``render_message`` does (a missing value
    included: a personal link absent from ``context`` stays undefined for the template)."""
    shared = {k: v for k, v in context.items() if k not in PERSONAL_LINKS}
    links = {k: PERSONAL_LINKS[k] for k in PERSONAL_LINKS if k in context}
    key = (
        name,
        language,
        fallbacks,
        repr(profile),
        public_url,
        message_id_domain,
        slug,
        tuple(sorted((k, repr(v)) for k, v in shared.items())),
        tuple(links),
        template_version(name),
    )

    def build() -> PreparedMessage:
        # unsubscribe_url and preferences_url are placeholders already (render_message sets them)
        rendered = render_message(
            name,
            language,
            {**shared, **{k: v for k, v in links.items() if k == "confirm_url"}},
            profile=profile,
            public_url=public_url,
            fallbacks=fallbacks,
        )
        origin = origin_of(
            profile,
            rendered.lang,
            slug=slug,
            domain=message_id_domain,
            campaign=name,
            kind="transactional",
        )
        template = origin_template(
            origin,
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            language=rendered.lang,
        )
        return PreparedMessage(template, rendered.lang)

    return cache.get(key, build)


def send_transactional(
    mailer: Mailer,
    *,
    name: str,
    subscriber: Subscriber,
    profile: NewsletterProfile,
    context: dict[str, Any],
    public_url: str,
    bounce_address: str,
    message_id_domain: str,
    now: datetime,
    slug: str,
    fallbacks: tuple[str, ...] = (),
    signer: DkimSigner | None = None,
) -> SmtpOutcome:
    """Send message ``name`` in the subscriber's language (:func:`prepare_message`, rendered once
    per language); returns the relay's outcome.

    ``context["confirm_url"]`` (the confirmation) is substituted per reader into the text part
    as it is and into the HTML part HTML-escaped, as the template's autoescape would have.
    ``context["unsubscribe_url"]``, when given, replaces the unsubscribe placeholder and becomes
    the List-Unsubscribe header. ``slug`` names the newsletter in List-Id and Feedback-ID (kind
    ``transactional``, so complaints about confirmations are told apart from editions').
    ``signer`` DKIM-signs the message as it signs editions (None when the relay signs): a
    confirmation mail must pass DMARC like any other (RFC 6376, RFC 7489).
    """
    prepared = prepare_message(
        name,
        subscriber.language,
        context,
        profile=profile,
        public_url=public_url,
        message_id_domain=message_id_domain,
        slug=slug,
        fallbacks=fallbacks,
    )
    values = {  # a link given empty stays a placeholder, as before, except the one to confirm
        placeholder: str(context[key] or "")
        for key, placeholder in PERSONAL_LINKS.items()
        if context.get(key) or (key == "confirm_url" and key in context)
    }
    unsubscribe_url = values.get(UNSUBSCRIBE_URL, "")
    message = personalise(
        prepared.template,
        to=subscriber.ascii_email or subscriber.email,
        message_id=identity.transactional_message_id(name, message_id_domain),
        date=now,
        # A welcome mail goes to a subscriber: it carries the same unsubscribe link as an edition.
        list_unsubscribe=[unsubscribe_url] if unsubscribe_url else [],
        substitutions=values,
        html_substitutions={key: str(escape(value)) for key, value in values.items()},
    )
    if signer is not None:
        message = signer.sign(message)
    recipient = subscriber.ascii_email or subscriber.email
    return mailer.send(bounce_address, recipient, message, smtputf8=subscriber.ascii_email is None)
