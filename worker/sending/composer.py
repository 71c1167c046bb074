"""Composing each delivery's message from its send's renditions: personalisation, not rendering.

Per language, the shared headers and bodies are prepared once
(``worker.sending.mime.build_template``);
per recipient only the placeholders (the unsubscribe URL) and a few ASCII headers change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from worker.editions.files import NewsletterProfile
from worker.editions.rendering import UNSUBSCRIBE_URL
from worker.models import Subscriber
from worker.sending.dkim import DkimSigner
from worker.sending.identity import verp_address
from worker.sending.mime import MessageTemplate, build_template, personalise
from worker.sending.ports import Clock
from worker.subscriptions.signups import unsubscribe_token
from worker.subscriptions.tokens import Tokens


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

    def unsubscribe_mailto(self, token: str) -> str:
        return f"mailto:unsubscribe+{token}@{self.bounce_domain}?subject=unsubscribe"


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
        language = rendition.language
        name = self.profile.name.get(language) or self.profile.name[self.profile.default_language]
        return build_template(
            subject=rendition.subject,
            from_name=self.profile.from_name.get(language, ""),
            from_address=self.profile.from_address,
            reply_to=self.profile.reply_to,
            html=rendition.html,
            text=rendition.text,
            language=language,
            list_id=f"{slug}.{self.links.message_id_domain}",
            list_id_name=name,
            feedback_id=f"{self.edition_key}:{language}:{slug}:newsletter",
            extra_headers={"X-Newsletter-Edition": self.edition_key},
        )

    def message_id(self, delivery_id: int) -> str:
        """``<d4711.2024-W28@news.example.org>``: derived from the delivery, so a resend is
        recognisable downstream and a bounce quoting it names the delivery."""
        return f"<d{delivery_id}.{self.edition_key}@{self.links.message_id_domain}>"

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
            substitutions={UNSUBSCRIBE_URL: unsubscribe_url},
            headers={"X-Newsletter-Delivery": str(delivery_id)},
        )
        if self.signer is not None:
            message = self.signer.sign(message)
        bounce_domain = self.links.bounce_domain
        envelope_from = verp_address(delivery_id, key=self.verp_key, domain=bounce_domain)
        return envelope_from, message
