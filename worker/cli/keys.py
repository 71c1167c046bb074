"""``newsletter keys generate``: a secret key for ``NEWSLETTER_SECRET_KEY``."""

from __future__ import annotations

import secrets

import click


@click.group()
def keys() -> None:
    """Secret keys."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a new random secret key (48 random bytes, URL-safe base64: 64 characters).

    Give the same value to every process (web app, workers, scheduler, inbound receivers):
    tokens signed by one are checked by the others, and suppression hashes are keyed with it.
    """
    click.echo(secrets.token_urlsafe(48))
