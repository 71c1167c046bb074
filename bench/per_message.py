"""CPU per message of the weekly send, split by stage, and render time per language.

One process, one thread, the real adapters: PostgreSQL (fresh database), the Redis throttle
(throttling off: one rate look-up per claimed chunk), SMTP into Postfix's ``smtp-sink``. The sample
edition goes to ``--subscribers`` readers twice: once plain (CPU and wall per message), once
under cProfile (the split by stage, and the functions with the most own time; wall seconds,
or CPU seconds of this process with ``--cpu-profile``; ``--profile-file FILE`` keeps it).

    .venv/bin/python bench/per_message.py --subscribers 3000
    .venv/bin/python bench/per_message.py --micro-only      # compose, DKIM, SMTP per call

Stages (cumulative profiler time of these functions, per message):
  personalisation  unsubscribe token (worker.subscriptions.signups.unsubscribe_token), VERP
  address, placeholder
                   substitution (worker.sending.mime.substitute / the pre-encoded body join)
  MIME building    worker.sending.mime.personalise minus the substitution above
  DKIM signing     worker.sending.dkim (when the app signs)
  SMTP             worker.sending.smtp.SmtpMailer.send
  throttle         worker.sending.throttle.RedisThrottle.reserve (one Redis EVALSHA)
  ledger           the rest of worker.sending.batch.send_batch: status reads, subscriber read,
  claim,
                   outcome, commits
Profiler overhead inflates Python-heavy stages; the plain run gives the true total.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common

if TYPE_CHECKING:
    from worker.runtime import Runtime

STAGES: dict[str, list[tuple[str, str]]] = {
    # (file suffix, function name) whose cumulative time makes the stage
    "personalisation": [
        ("worker/subscriptions/signups.py", "unsubscribe_token"),
        ("worker/sending/identity.py", "verp_address"),
        ("worker/sending/mime.py", "substitute"),
        ("worker/sending/mime.py", "fill"),
    ],
    "mime": [("worker/sending/mime.py", "personalise")],
    "dkim": [("worker/sending/dkim.py", "sign"), ("worker/sending/dkim.py", "sign_message")],
    "smtp": [("worker/sending/smtp.py", "send")],
    "throttle": [
        ("worker/sending/throttle.py", "reserve"),
        ("bench/batched_dispatch.py", "_reserve_many"),
    ],
    "send_batch": [
        ("worker/sending/batch.py", "send_batch"),
        ("bench/batched_dispatch.py", "send_batch"),
    ],
    "compose": [("worker/sending/composer.py", "compose")],
}
DETAIL = [
    ("worker/sending/sql_ledger.py", "claim"),
    ("worker/sending/sql_ledger.py", "submit"),
    ("worker/sending/sql_ledger.py", "record_accepted"),
    ("worker/sending/sql_ledger.py", "record_outcome"),
    ("worker/sending/sql_ledger.py", "send_status"),
    ("sqlalchemy/orm/session.py", "get"),
    ("sqlalchemy/orm/session.py", "commit"),
    ("sqlalchemy/engine/base.py", "_execute_context"),
    ("worker/subscriptions/tokens.py", "issue"),
]


def cumulative(stats: pstats.Stats, wanted: list[tuple[str, str]]) -> float:
    total = 0.0
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in raw.items():
        if any(filename.endswith(suffix) and name == fn for suffix, fn in wanted):
            total += ct
    return total


def calls(stats: pstats.Stats, suffix: str, fn: str) -> int:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    return sum(v[1] for (f, _l, n), v in raw.items() if f.endswith(suffix) and n == fn)


def run_send(rt: Runtime, send_id: int, batch_size: int, prototype: bool = False) -> int:
    """Plan ``send_id`` and send every batch in this thread, as the actors would; the count sent."""
    from bench.common import batch_ranges
    from worker.sending.batch import send_batch
    from worker.sending.sends import plan_send

    if prototype:
        import smtplib

        from bench.batched_dispatch import quote_periods, send_batch

        # smtplib's private dot-stuffing, swapped for the prototype's (typeshed omits the name)
        smtplib._quote_periods = quote_periods  # type: ignore[attr-defined]

    with rt.session() as session:
        plan_send(session, send_id, rt.links.public_url, rt.clock.now(), rt.metrics)
        ranges = list(batch_ranges(session, send_id, batch_size))
    sent = 0
    for first, last in ranges:
        with rt.session() as session:
            report = send_batch(
                rt.ledger(session),
                send_id,
                first,
                last,
                composer=rt.composer(session, send_id),
                mailer=rt.mailer,
                throttle=rt.throttle,
                clock=rt.clock,
                policy=rt.policy,
            )
        sent += report.counts.get("sent", 0)
    return sent


def render_times(repeat: int = 20) -> dict[str, float]:
    """Median milliseconds of ``render_edition`` per language (Jinja2 → MJML → HTML, and text)."""
    from worker.editions.files import read_edition
    from worker.editions.rendering import render_edition

    source = read_edition(common.EDITION)
    out = {}
    for language, content in source.contents.items():
        render_edition(
            source.newsletter, content, public_url="https://news.example.org"
        )  # compile templates
        samples = []
        for _ in range(repeat):
            t = time.perf_counter()
            render_edition(source.newsletter, content, public_url="https://news.example.org")
            samples.append(time.perf_counter() - t)
        out[language] = 1000 * statistics.median(samples)
    return out


def compose_times(rt: Runtime, send_id: int, repeat: int = 500) -> dict[str, float]:
    """Milliseconds per ``Composer.compose`` (token, VERP, headers, bodies) per language."""
    from worker.models import Subscriber

    with rt.session() as session:
        composer = rt.composer(session, send_id)
    out = {}
    for language in composer.templates:
        reader = Subscriber(
            id=1,
            email="reader1@d1.example.net",
            ascii_email="reader1@d1.example.net",
            language=language,
        )
        t = time.process_time()
        for n in range(repeat):
            reader.id = n + 1
            composer.compose(n + 1, reader, language)
        out[language] = 1000 * (time.process_time() - t) / repeat
    return out


def micro_times(rt: Runtime, send_id: int, sink_url: str, repeat: int = 300) -> dict[str, float]:
    """CPU milliseconds per call of the parts one message needs, on the ``ru`` message (43 KB):
    DKIM signing (2048-bit RSA, ``worker.sending.dkim``), ``SmtpMailer.send`` into the sink, and
    smtplib's dot-stuffing alone against the ``bytes.replace`` proposed for
    ``worker.sending.smtp``."""
    import smtplib

    from cryptography.hazmat.primitives.asymmetric import rsa

    from bench.batched_dispatch import quote_periods
    from worker.models import Subscriber
    from worker.sending.dkim import DkimSigner
    from worker.sending.smtp import SmtpMailer

    with rt.session() as session:
        composer = rt.composer(session, send_id)
    address = "r@d1.example.net"
    reader = Subscriber(id=1, email=address, ascii_email=address, language="ru")
    _, message = composer.compose(1, reader, "ru")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = DkimSigner(domain="example.org", selector="bench", key=key)
    mailer = SmtpMailer(sink_url)
    mailer.send("bounces@news.example.org", "r@d1.example.net", message, smtputf8=False)
    calls: dict[str, Any] = {
        "dkim_sign": lambda: signer.sign(message),
        "smtp_send": lambda: mailer.send(
            "bounces@news.example.org", "r@d1.example.net", message, smtputf8=False
        ),
        "smtplib_quote_periods": lambda: smtplib._quote_periods(message),  # type: ignore[attr-defined]
        "bytes_replace_quote_periods": lambda: quote_periods(message),
    }
    out = {}
    for name, call in calls.items():
        t = time.process_time()
        for _ in range(repeat):
            call()
        out[name] = 1000 * (time.process_time() - t) / repeat
    mailer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--top", type=int, default=25, help="functions to list by own time")
    parser.add_argument(
        "--prototype",
        action="store_true",
        help="send with the chunked-ledger prototype (bench/batched_dispatch.py)",
    )
    parser.add_argument(
        "--cpu-profile",
        action="store_true",
        help="time the profiled run in CPU seconds of this process (default: wall seconds)",
    )
    parser.add_argument("--profile-file", help="also write the profile here (python -m pstats)")
    parser.add_argument(
        "--no-profile", action="store_true", help="the plain run only (no profiled run)"
    )
    parser.add_argument(
        "--micro-only",
        action="store_true",
        help="only render, compose, DKIM and SMTP micro-figures (no send)",
    )
    args = parser.parse_args()
    print(f"machine: {common.machine()}; load average {os.getloadavg()[0]:.2f}")
    print("render per language, median ms:", {k: round(v, 2) for k, v in render_times().items()})

    sink = common.start_sink()
    try:
        with common.database() as db_url:
            common.load_edition_and_subscribers(db_url, args.subscribers)
            from worker.runtime import Runtime
            from worker.settings import Settings

            env = common.settings_env(db_url, sink.url, batch_size=args.batch_size)
            rt = Runtime(Settings.from_env(env))
            if args.micro_only:
                micro_id = common.create_send(db_url, args.batch_size)
                from worker.models import Send
                from worker.sending.sends import render_send

                with rt.session() as session:
                    send = session.get(Send, micro_id)
                    assert send is not None
                    render_send(session, send, rt.links.public_url, rt.clock.now())
                print(
                    "compose only, ms CPU per message:",
                    {k: round(v, 3) for k, v in compose_times(rt, micro_id).items()},
                )
                print(
                    "ms CPU per call (ru message):",
                    {k: round(v, 3) for k, v in micro_times(rt, micro_id, sink.url).items()},
                )
                return
            plain_id = common.create_send(db_url, args.batch_size)
            wall, cpu = time.perf_counter(), time.process_time()
            sent = run_send(rt, plain_id, args.batch_size, args.prototype)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"plain run: {sent} sent, {1000 * wall / sent:.2f} ms wall and "
                f"{1000 * cpu / sent:.2f} ms CPU of this process per message (planning included), "
                f"{sent / wall:.0f} messages/s in one thread"
            )
            print(
                "compose only, ms CPU per message:",
                {k: round(v, 3) for k, v in compose_times(rt, plain_id).items()},
            )
            if args.no_profile:
                return

            profiled_id = common.create_send(db_url, args.batch_size)
            timer = time.process_time if args.cpu_profile else time.perf_counter
            profiler = cProfile.Profile(timer)
            profiler.enable()
            sent = run_send(rt, profiled_id, args.batch_size, args.prototype)
            profiler.disable()
    finally:
        sink.stop()
    stats = pstats.Stats(profiler)
    if args.profile_file:
        stats.dump_stats(args.profile_file)
    per = {name: 1000 * cumulative(stats, fns) / sent for name, fns in STAGES.items()}
    personalisation = per["personalisation"]
    mime = (
        per["mime"]
        - cumulative(
            stats, [("worker/sending/mime.py", "substitute"), ("worker/sending/mime.py", "fill")]
        )
        * 1000
        / sent
    )
    ledger = per["send_batch"] - per["compose"] - per["smtp"] - per["throttle"]
    print(f"\nprofiled run: {sent} messages; ms per message (cProfile, cumulative):")
    rows = [
        ("personalisation", personalisation),
        ("MIME building", mime),
        ("DKIM signing", per["dkim"]),
        ("SMTP hand-off", per["smtp"]),
        ("throttle (Redis)", per["throttle"]),
        ("ledger (DB)", ledger),
        ("send_batch total", per["send_batch"]),
    ]
    for label, value in rows:
        print(f"  {label:18} {value:7.3f}")
    print(
        "  detail: "
        + ", ".join(
            f"{fn} {1000 * cumulative(stats, [(sfx, fn)]) / sent:.3f} ms "
            f"({calls(stats, sfx, fn) / sent:.1f} calls)"
            for sfx, fn in DETAIL
        )
    )
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[-6000:])


if __name__ == "__main__":
    started = datetime.now(UTC)
    main()
    print(f"run took {(datetime.now(UTC) - started).total_seconds():.0f} s")
