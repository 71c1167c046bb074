"""``newsletter status``: recent sends and their live progress in the terminal (rich)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from worker.settings import Settings

if TYPE_CHECKING:
    from worker.operators.dashboard import SendSummary

LIVE = ("planning", "sending", "paused")
STATE_STYLE = {"sending": "bold green", "paused": "yellow", "planning": "cyan", "cancelled": "dim"}


def sends_table(sends: list[SendSummary], width: int = 30) -> Table:
    """A rich table of ``worker.operators.dashboard.SendSummary`` rows with a progress bar each."""
    table = Table(title="Recent sends", title_justify="left", header_style="bold")
    for name in ("send", "edition", "status", "started", "planned", "sent", "deferred",
                 "failed", "unknown", "skipped"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("edition", "status") else "right")
    table.add_column("progress", min_width=width + 6)
    for send in sends:
        states, planned, done, started = send.states, send.planned, send.done, send.started_at
        bar = ProgressBar(total=max(planned, 1), completed=done, width=width)
        share = f" {done / planned:4.0%}" if planned else "   –"
        table.add_row(
            str(send.id),
            send.edition_key,
            Text(send.status, style=STATE_STYLE.get(send.status, "")),
            started.strftime("%Y-%m-%d %H:%M") if started else "–",
            f"{planned:,}",
            f"{states.get('sent', 0):,}",
            f"{states.get('deferred', 0):,}",
            f"{states.get('failed', 0) + states.get('expired', 0):,}",
            f"{states.get('unknown', 0):,}",
            f"{states.get('skipped', 0):,}",
            _bar_with_share(bar, share),
        )
    return table


WIDE = 110  # columns the table needs; narrower terminals (and pipes, 80) get the list


def sends_list(sends: list[SendSummary], width: int = 80) -> Group:
    """The same figures as ``sends_table`` for a narrow terminal: two lines per send, the first
    naming it, the second its progress bar and deliveries per state (fits ``width`` columns)."""
    rows: list[Text | Table] = []
    for send in sends:
        states, planned, done, started = send.states, send.planned, send.done, send.started_at
        head = Text(f"send {send.id}  {send.edition_key}  ")
        head.append(send.status, style=STATE_STYLE.get(send.status, ""))
        head.append(f"  started {started:%Y-%m-%d %H:%M}" if started else "  not started")
        figures = "  ".join(
            f"{name} {count:,}"
            for name, count in (
                ("planned", planned),
                ("sent", states.get("sent", 0)),
                ("deferred", states.get("deferred", 0)),
                ("failed", states.get("failed", 0) + states.get("expired", 0)),
                ("unknown", states.get("unknown", 0)),
                ("skipped", states.get("skipped", 0)),
            )
        )
        bar = ProgressBar(total=max(planned, 1), completed=done, width=max(10, width - 12))
        share = f" {done / planned:4.0%}" if planned else "   –"
        rows += [head, _bar_with_share(bar, share), Text("  " + figures, overflow="fold")]
    return Group(Text("Recent sends", style="bold"), *rows)


def _bar_with_share(bar: ProgressBar, share: str) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_row(bar, share)
    return grid


@click.command()
@click.option("--limit", type=int, default=10, show_default=True, help="How many sends.")
@click.option("--watch", is_flag=True, help="Refresh until no send is planning, sending or paused.")
@click.option(
    "--interval", type=float, default=2.0, show_default=True, help="Seconds between refreshes."
)
def status(limit: int, watch: bool, interval: float) -> None:
    """Recent sends: deliveries per state and progress (``--watch`` follows live sends)."""
    from worker.db import session_scope
    from worker.operators.dashboard import recent_sends

    settings = Settings.from_env()  # read-only: signs nothing, so it needs no secret key
    console = Console()

    def render() -> tuple[RenderableType, bool]:
        with session_scope(settings) as session:
            sends = recent_sends(session, limit)
        width = console.width
        view = sends_table(sends) if width >= WIDE else sends_list(sends, width)
        return view, any(s.status in LIVE for s in sends)

    table, live = render()
    if not watch or not live:
        console.print(table)
        return
    with Live(table, console=console, refresh_per_second=4) as screen:
        while live:
            time.sleep(interval)
            table, live = render()
            screen.update(table)
