"""Placeholders a rendition carries for values that differ per recipient.

Rendering writes them (MJML passes ``%%NAME%%`` through unchanged); the sender substitutes them
per delivery. Kept apart from rendering so the send path needs neither Jinja2, Markdown nor Babel.
"""

from __future__ import annotations

UNSUBSCRIBE_URL = "%%UNSUBSCRIBE_URL%%"
"""Placeholder for the recipient's unsubscribe link; substituted per delivery by the sender."""

PREFERENCES_URL = "%%PREFERENCES_URL%%"
"""Placeholder for the recipient's preferences page link; substituted per delivery like
:data:`UNSUBSCRIBE_URL`."""

CONFIRM_URL = "%%CONFIRM_URL%%"
"""Placeholder for the reader's confirmation link in the confirmation mail: the mail is rendered
once per language and this is substituted per reader (``worker.sending.transactional``)."""
