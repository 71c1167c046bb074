"""Reading the parts of a received mail in tests."""

from __future__ import annotations

from email.message import EmailMessage, Message


def body_text(message: Message | EmailMessage, subtype: str) -> str:
    """The decoded ``text/<subtype>`` body ("plain" or "html"); AssertionError if there is none."""
    assert isinstance(message, EmailMessage), "parse with policy=email.policy.default"
    part = message.get_body((subtype,))
    assert part is not None, f"no text/{subtype} part"
    content = part.get_content()
    assert isinstance(content, str)
    return content
