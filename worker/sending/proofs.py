"""Proof copies: one copy of an edition in one language, to an editor's own address, exactly as
readers get it (same headers, same DKIM signature) but with links that unsubscribe nobody.

Used by ``newsletter edition test-send`` and the desk's test-send page. A proof creates no send
and no delivery: it is not a copy of any reader's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from worker.editions.files import NewsletterProfile
from worker.editions.placeholders import PREFERENCES_URL, UNSUBSCRIBE_URL
from worker.editions.rendering import RenderedMessage
from worker.sending import identity
from worker.sending.composer import origin_of
from worker.sending.dkim import DkimSigner
from worker.sending.mime import origin_template, personalise
from worker.sending.ports import Mailer, SmtpOutcome
from worker.subscriptions.addresses import Address


@dataclass(frozen=True)
class ProofSetup:
    """Where proofs come from: the newsletter's slug, the domain of List-Id and Message-ID, the
    web app's base URL, the bounce domain of the return path, and the DKIM signer (None when the
    relay signs)."""

    slug: str
    sending_domain: str
    public_url: str
    bounce_domain: str
    signer: DkimSigner | None = None


def proof_message(
    setup: ProofSetup,
    profile: NewsletterProfile,
    edition_key: str,
    language: str,
    rendered: RenderedMessage,
    to: Address,
    now: datetime,
) -> bytes:
    """The message bytes of one proof copy of ``rendered`` (``edition_key`` in ``language``) to
    ``to``, signed when ``setup.signer`` is set. The unsubscribe and preferences links point at
    ``/u/test-copy`` and ``/p/test-copy``, which unsubscribe nobody."""
    origin = origin_of(
        profile,
        language,
        slug=setup.slug,
        domain=setup.sending_domain,
        campaign=edition_key,
        edition_key=edition_key,
    )
    template = origin_template(
        origin, subject=rendered.subject, html=rendered.html, text=rendered.text, language=language
    )
    base = setup.public_url.rstrip("/")
    unsubscribe = f"{base}/u/test-copy"
    message = personalise(
        template,
        to=to.ascii_email or to.normalized,
        message_id=identity.transactional_message_id(f"test.{edition_key}", setup.sending_domain),
        date=now,
        list_unsubscribe=[unsubscribe],
        substitutions={UNSUBSCRIBE_URL: unsubscribe, PREFERENCES_URL: f"{base}/p/test-copy"},
    )
    return setup.signer.sign(message) if setup.signer is not None else message


def send_proof(setup: ProofSetup, mailer: Mailer, to: Address, message: bytes) -> SmtpOutcome:
    """Hand ``message`` to the relay through ``mailer`` (return path: the bare bounce address);
    the relay's reply comes back (``outcome.accepted`` says whether it took it)."""
    return mailer.send(
        identity.bounce_address(setup.bounce_domain),
        to.ascii_email or to.normalized,
        message,
        smtputf8=to.ascii_email is None,
    )
