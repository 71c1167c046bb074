"""``newsletter users add|remove|reset|list``: the editors' desk accounts (``worker.desk``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from worker.settings import Settings

if TYPE_CHECKING:
    from worker.runtime import Runtime


def _runtime() -> Runtime:
    from worker.runtime import Runtime

    return Runtime(Settings.from_env())


def _password(from_stdin: bool) -> str:
    """The new password: the first line of standard input, or typed twice at a prompt."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@click.group()
def users() -> None:
    """Desk accounts (the /desk web pages): add, remove, reset a password, list."""


@users.command("add")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(["editor", "operator"]), required=True, help="What they may do."
)
@click.option("--address", default=None, help="Their own mail address, for test sends.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_add(name: str, role: str, address: str | None, password_stdin: bool) -> None:
    """Create desk user NAME (the password is asked twice, or read with --password-stdin)."""
    from worker.desk import accounts, audit

    rt = _runtime()
    password = _password(password_stdin)
    now = rt.clock.now()
    try:
        with rt.session() as session:
            accounts.add_user(session, name, role, password, address, now)
            audit.record(session, "cli", "user.add", name, {"role": role}, at=now)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"desk user {name} added ({role})")


@users.command("remove")
@click.argument("name")
def users_remove(name: str) -> None:
    """Delete desk user NAME and end their sessions (the action log keeps the name)."""
    from worker.desk import accounts, audit

    rt = _runtime()
    now = rt.clock.now()
    try:
        with rt.session() as session:
            ended = accounts.remove_user(session, name, now)
            audit.record(session, "cli", "user.remove", name, {"sessions": str(ended)}, at=now)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"desk user {name} removed; {ended} session(s) ended")


@users.command("reset")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_reset(name: str, password_stdin: bool) -> None:
    """Give desk user NAME a new password and end every session of theirs."""
    from worker.desk import accounts, audit

    rt = _runtime()
    password = _password(password_stdin)
    now = rt.clock.now()
    try:
        with rt.session() as session:
            ended = accounts.reset_password(session, name, password, now)
            audit.record(session, "cli", "user.reset", name, {"sessions": str(ended)}, at=now)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"desk user {name}: new password; {ended} session(s) ended")


@users.command("list")
@click.option("--addresses", is_flag=True, help="Show each user's own mail address too.")
def users_list(addresses: bool) -> None:
    """One line per desk user: name, role, last login (UTC), disabled."""
    from worker.desk import accounts

    rt = _runtime()
    with rt.session() as session:
        for user in accounts.users(session):
            last = user.last_login_at.strftime("%Y-%m-%d %H:%M") if user.last_login_at else "never"
            line = f"{user.name}\t{user.role}\tlast login {last}"
            if user.disabled:
                line += "\tdisabled"
            if addresses:
                line += f"\t{user.address or '-'}"
            click.echo(line)
