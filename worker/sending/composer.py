"""Composing each delivery's message from its send's renditions: personalisation, not rendering.

Per language, the shared headers and bodies are prepared once (``worker.sending.mime.
origin_template``, the builder transactional and test mail use too); per recipient only the
placeholders (the unsubscribe URL) and a few ASCII headers change. Identifiers come from
``worker.sending.identity``. Kept light: no signup, rendering or validation imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from worker.editions.placeholders import PREFERENCES_URL, UNSUBSCRIBE_URL
from worker.models import Subscriber
from worker.sending import identity
from worker.sending.dkim import DkimSigner
from worker.sending.mime import MessageTemplate, Origin, origin_template, personalise
from worker.sending.ports import Clock
from worker.subscriptions.tokens import Tokens, preferences_token, unsubscribe_token

if TYPE_CHECKING:  # editions.files loads YAML and email-validator: not on the send path
    from worker.editions.files import NewsletterProfile


@dataclass(frozen=True)
class RenditionText:
    """The parts of a rendition the composer needs."""

    language: str
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class Links:
    """Where the links in mails point. ``public_url`` without a trailing slash."""

    public_url: str
    bounce_domain: str
    message_id_domain: str

    def unsubscribe_url(self, token: str) -> str:
        return f"{self.public_url}/u/{token}"

    def preferences_url(self, token: str) -> str:
        """The reader's preferences page (``worker.web.preferences``)."""
        return f"{self.public_url}/p/{token}"

    def unsubscribe_mailto(self, token: str) -> str:
        return identity.unsubscribe_mailto(token, self.bounce_domain)


def origin_of(
    profile: NewsletterProfile,
    language: str,
    *,
    slug: str,
    domain: str,
    campaign: str,
    kind: str = "newsletter",
    edition_key: str | None = None,
) -> Origin:
    """The header set of ``profile``'s mail in ``language`` (its default when ``name`` has none);
    ``domain`` is the right-hand side of our List-Id, ``campaign`` the first Feedback-ID part."""
    name = profile.name.get(language) or profile.name[profile.default_language]
    return Origin(
        from_name=profile.from_name.get(language, ""),
        from_address=profile.from_address,
        reply_to=profile.reply_to,
        list_id=identity.list_id(slug, domain),
        list_name=name,
        feedback_id=identity.FeedbackId(campaign, language, slug, kind).format(),
        edition_key=edition_key,
    )


class Composer:
    """Builds the message bytes of each delivery of one send."""

    def __init__(
        self,
        *,
        profile: NewsletterProfile,
        renditions: dict[str, RenditionText],
        tokens: Tokens,
        links: Links,
        edition_key: str,
        slug: str,
        verp_key: str,
        clock: Clock,
        signer: DkimSigner | None = None,
    ) -> None:
        self.profile = profile
        self.signer = signer  # None when the relay signs
        self.tokens = tokens
        self.links = links
        self.edition_key = edition_key
        self.verp_key = verp_key
        self.clock = clock
        self.templates: dict[str, MessageTemplate] = {
            language: self._template(r, slug) for language, r in renditions.items()
        }

    def _template(self, rendition: RenditionText, slug: str) -> MessageTemplate:
        origin = origin_of(
            self.profile,
            rendition.language,
            slug=slug,
            domain=self.links.message_id_domain,
            campaign=self.edition_key,
            edition_key=self.edition_key,
        )
        return origin_template(
            origin,
            subject=rendition.subject,
            html=rendition.html,
            text=rendition.text,
            language=rendition.language,
        )

    def message_id(self, delivery_id: int) -> str:
        """See ``identity.edition_message_id``."""
        return identity.edition_message_id(
            delivery_id, self.edition_key, self.links.message_id_domain, key=self.verp_key
        )

    def compose(
        self, delivery_id: int, subscriber: Subscriber, language: str, now: datetime | None = None
    ) -> tuple[str, bytes]:
        """(envelope sender, message bytes) for one delivery, DKIM-signed when a signer is set.
        Raises ``KeyError`` for a language the send has no rendition for (the planner never
        assigns one)."""
        template = self.templates[language]
        token = unsubscribe_token(self.tokens, subscriber.id)
        unsubscribe_url = self.links.unsubscribe_url(token)
        message = personalise(
            template,
            to=subscriber.ascii_email or subscriber.email,
            message_id=self.message_id(delivery_id),
            date=now or self.clock.now(),
            list_unsubscribe=[unsubscribe_url, self.links.unsubscribe_mailto(token)],
            substitutions={
                UNSUBSCRIBE_URL: unsubscribe_url,
                PREFERENCES_URL: self.links.preferences_url(
                    preferences_token(self.tokens, subscriber.id)
                ),
            },
            headers={
                identity.DELIVERY_HEADER: identity.delivery_header(delivery_id, key=self.verp_key)
            },
        )
        if self.signer is not None:
            message = self.signer.sign(message)
        envelope_from = identity.verp_address(
            delivery_id, key=self.verp_key, domain=self.links.bounce_domain
        )
        return envelope_from, message
