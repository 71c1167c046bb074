"""The ``newsletter`` command: editors' and operators' entry point.

Sub-commands live in one module per group (``db``, ``edition``, ``send``, ``demo``, …) and are
registered here. Modules that import dramatiq are imported only inside the commands that need
them, so that ``newsletter demo`` can choose its broker first.
"""

from __future__ import annotations

import click

from worker.cli.core import db, scheduler, send, throttle, web
from worker.cli.demo import demo
from worker.cli.edition import edition
from worker.cli.edition_live import export, from_feeds, load, test_send
from worker.cli.inbound import inbound
from worker.cli.keys import keys
from worker.cli.status import status
from worker.cli.subscribers import subscribers
from worker.cli.suppressions import suppressions
from worker.cli.users import users
from worker.operators.metrics import install_session_hooks


class _Main(click.Group):
    """Turns an unreachable Redis or database, a bad setting or a newsletter not set up yet into
    one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        import redis
        from sqlalchemy.exc import OperationalError

        from worker.editions.store import NoNewsletter
        from worker.safety.keyring import DataKeyError, SealedValueError
        from worker.settings import Settings, SettingsError, hide_password

        try:
            return super().invoke(ctx)
        except (SettingsError, NoNewsletter, DataKeyError, SealedValueError) as exc:
            raise click.ClickException(str(exc)) from None
        except redis.exceptions.ConnectionError as exc:
            url = hide_password(Settings.from_env().redis_url)
            raise click.ClickException(f"cannot reach Redis at {url}: {exc}") from None
        except OperationalError as exc:
            url = hide_password(Settings.from_env().database_url)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise click.ClickException(f"cannot use the database at {url}: {reason}") from None


@click.group(cls=_Main)
def main() -> None:
    """Newsletter dispatch worker: signups, weekly editions, feedback."""
    # Sessions of every command (e.g. the inbound receivers' worker.db.session_scope) count
    # committed feedback and suppression rows, as the runtime's do.
    install_session_hooks()


main.add_command(db)
main.add_command(send)
main.add_command(scheduler)
main.add_command(throttle)
main.add_command(web)
main.add_command(demo)
main.add_command(subscribers)
main.add_command(inbound)
main.add_command(suppressions)
main.add_command(status)
main.add_command(keys)
main.add_command(users)
# A broken import here must fail loudly: swallowing it once removed ``newsletter edition``.
edition.add_command(load)
edition.add_command(test_send)
edition.add_command(export)
edition.add_command(from_feeds)
main.add_command(edition)
