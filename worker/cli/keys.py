"""``newsletter keys``: make a secret or data key; re-seal the stored addresses under a new
data key (``keys rotate``)."""

from __future__ import annotations

import secrets
import sys

import click
from rich.progress import TaskID

from worker.safety.keyring import current, new_data_key


@click.group()
def keys() -> None:
    """Secret and data keys."""


@keys.command("generate")
@click.option(
    "--data",
    is_flag=True,
    help="A data key (NEWSLETTER_DATA_KEY: base64 of 32 bytes) instead of a secret key.",
)
def keys_generate(data: bool) -> None:
    """Print a new random secret key (48 random bytes, URL-safe base64: 64 characters), or with
    ``--data`` a data key (32 random bytes, base64).

    Give the same value to every process (web app, workers, scheduler, inbound receivers):
    tokens signed by one are checked by the others; the data key opens the stored addresses.
    Keep the data key outside the database and its backups: whoever holds both reads the
    addresses.
    """
    click.echo(new_data_key() if data else secrets.token_urlsafe(48))


@keys.command("rotate")
@click.option("--batch-size", type=click.IntRange(100, 100_000), default=5000, show_default=True)
def keys_rotate(batch_size: int) -> None:
    """Re-seal every stored address under the first key of NEWSLETTER_DATA_KEYS.

    Configure ``NEWSLETTER_DATA_KEYS="<new id>:<new key>,<old id>:<old key>"`` on every process
    first, then run this. It works in batches (one transaction each), may run while sends run,
    and may be interrupted and run again: rows already under the new key are skipped. On a
    terminal it shows a progress bar per table. When it has finished, remove the old key from
    the configuration.
    """
    from worker.db import engine_for
    from worker.safety.data_keys import rotate
    from worker.settings import Settings

    settings = Settings.from_env()
    engine = engine_for(settings)  # checks the configured keys against the database first
    ring = current()
    if sys.stdout.isatty():
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            tasks: dict[str, TaskID] = {}

            def step(table: str, done: int, todo: int) -> None:
                if table not in tasks:
                    tasks[table] = bar.add_task(f"re-sealing {table}", total=todo)
                bar.update(tasks[table], completed=done)

            result = rotate(engine, ring, batch_size=batch_size, progress=step)
    else:
        result = rotate(engine, ring, batch_size=batch_size)
    click.echo(
        f"re-sealed {result.resealed} rows under data key id {ring.primary} "
        f"({result.skipped} were already); the other keys may now be removed"
    )
