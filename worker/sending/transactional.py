"""Transactional mail (confirmation, welcome): rendered per message, sent at once.

Not bulk mail: no List-Unsubscribe, and a newsletter unsubscribe does not block it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from worker.editions.files import NewsletterProfile
from worker.editions.placeholders import PREFERENCES_URL, UNSUBSCRIBE_URL
from worker.editions.rendering import render_message
from worker.models import Subscriber
from worker.sending import identity
from worker.sending.composer import origin_of
from worker.sending.dkim import DkimSigner
from worker.sending.mime import origin_template, personalise
from worker.sending.ports import Mailer, SmtpOutcome


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
    """Render message ``name`` in the subscriber's language and send it; returns the outcome.

    ``context["unsubscribe_url"]``, when given, replaces the unsubscribe placeholder and becomes
    the List-Unsubscribe header. ``slug`` names the newsletter in List-Id and Feedback-ID (kind
    ``transactional``, so complaints about confirmations are told apart from editions').
    ``signer`` DKIM-signs the message as it signs editions (None when the relay signs): a
    confirmation mail must pass DMARC like any other (RFC 6376, RFC 7489).
    """
    unsubscribe_url = str(context.get("unsubscribe_url") or "")
    preferences_url = str(context.get("preferences_url") or "")
    # The template gets the placeholders (rendering checks them); personalise() fills them in.
    personal = ("unsubscribe_url", "preferences_url")
    context = {k: v for k, v in context.items() if k not in personal}
    rendered = render_message(
        name,
        subscriber.language,
        context,
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
    message = personalise(
        template,
        to=subscriber.ascii_email or subscriber.email,
        message_id=identity.transactional_message_id(name, message_id_domain),
        date=now,
        # A welcome mail goes to a subscriber: it carries the same unsubscribe link as an edition.
        list_unsubscribe=[unsubscribe_url] if unsubscribe_url else [],
        substitutions={
            placeholder: url
            for placeholder, url in (
                (UNSUBSCRIBE_URL, unsubscribe_url),
                (PREFERENCES_URL, preferences_url),
            )
            if url
        },
    )
    if signer is not None:
        message = signer.sign(message)
    recipient = subscriber.ascii_email or subscriber.email
    return mailer.send(bounce_address, recipient, message, smtputf8=subscriber.ascii_email is None)
