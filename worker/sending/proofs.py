"""Proof copies: one copy of an edition in one language, to an editor's own address, exactly as
readers get it (same headers, same DKIM signature) but with links that unsubscribe nobody.

Used by ``newsletter edition test-send`` and the desk's test-send page. A proof creates no send
and no delivery: it is not a copy of any reader's.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache

import jinja2

from worker.editions.files import NewsletterProfile
from worker.editions.localisation import translations
from worker.editions.placeholders import PREFERENCES_URL, UNSUBSCRIBE_URL
from worker.editions.rendering import RenderedMessage
from worker.sending import identity
from worker.sending.composer import origin_of
from worker.sending.dkim import DkimSigner
from worker.sending.mime import origin_template, personalise
from worker.sending.ports import Mailer, SmtpOutcome
from worker.settings import TEMPLATES_DIR
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


_BODY = re.compile(r"<body\b[^>]*>", re.I)


@cache
def _environment(language: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=False,  # plain text; the HTML part escapes it
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    return env


def test_copy_note(language: str) -> str:
    """ "Test copy — its preferences and unsubscribe links do not work" in ``language``
    (``templates/edition/test_copy_note.txt.j2``; English when the catalogue lacks it)."""
    return _environment(language).get_template("edition/test_copy_note.txt.j2").render().strip()


def marked_as_test(rendered: RenderedMessage, language: str) -> tuple[str, str]:
    """The HTML and text of ``rendered`` with :func:`test_copy_note` as their first line (in
    the HTML, a block right after ``<body>``; at the very start when it has none)."""
    note = test_copy_note(language)
    block = (
        '<div style="background:#fff3cd;color:#5c4400;border:2px solid #c99a00;padding:8px 12px;'
        f'font:bold 14px/1.4 sans-serif;text-align:center" role="note">{html.escape(note)}</div>'
    )
    found = _BODY.search(rendered.html)
    at = found.end() if found else 0
    marked_html = rendered.html[:at] + block + rendered.html[at:]
    return marked_html, f"{note}\n\n{rendered.text}"


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
    ``/u/test-copy`` and ``/p/test-copy``, which unsubscribe nobody; both parts begin with
    :func:`test_copy_note` in ``language``, which says so."""
    origin = origin_of(
        profile,
        language,
        slug=setup.slug,
        domain=setup.sending_domain,
        campaign=edition_key,
        edition_key=edition_key,
    )
    marked_html, marked_text = marked_as_test(rendered, language)
    template = origin_template(
        origin, subject=rendered.subject, html=marked_html, text=marked_text, language=language
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
