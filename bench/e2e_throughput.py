"""End-to-end throughput of a weekly send against the C limit of the SMTP hand-off on this machine.

The sample edition (examples/editions/2024-W28, en/be/ru) goes to N confirmed subscribers on a
fresh PostgreSQL database, through ``python -m dramatiq worker.actors -p 2`` (Redis broker,
throttling off) into Postfix's ``smtp-sink`` on loopback. In the same run ``smtp-source`` sends N
messages of the same size over the same number of connections (processes × threads, each kept
open) into the same sink, three times: once before the app's run, twice after (the reference
varies between runs on a shared machine). Prints messages per second for both and the ratio of
the app's to the median of the three.

    .venv/bin/python bench/e2e_throughput.py --subscribers 10000
    .venv/bin/python bench/e2e_throughput.py --subscribers 100000

Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common


def message_sizes(env: dict[str, str], send_id: int) -> dict[str, int]:
    """Size in bytes of one composed message per language (as the workers build them)."""
    from worker.models import Subscriber
    from worker.runtime import Runtime
    from worker.settings import Settings

    rt = Runtime(Settings.from_env(env))
    with rt.session() as session:
        composer = rt.composer(session, send_id)
        sizes = {}
        for language in composer.templates:
            reader = Subscriber(
                id=1,
                email="reader1@d1.example.net",
                ascii_email="reader1@d1.example.net",
                language=language,
            )
            sizes[language] = len(composer.compose(1, reader, language)[1])
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=8, help="dramatiq threads per process (its default: 8)"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--dkim",
        action="store_true",
        help="sign in the app (NEWSLETTER_DKIM_*, worker/sending/dkim.py)",
    )
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--reference-size",
        type=int,
        default=36_178,
        help="message size of the smtp-source run before the product's (bytes; the sample "
        "edition's mean composed size, printed again after the run)",
    )
    parser.add_argument(
        "--actors",
        default="worker.actors",
        help="actor module (bench.batched_actors: the chunked-ledger prototype)",
    )
    args = parser.parse_args()

    print(f"machine: {common.machine()}; load average {os.getloadavg()[0]:.2f}")
    sink = common.start_sink()
    workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    try:
        with common.database() as db_url:
            t = time.perf_counter()
            common.load_edition_and_subscribers(db_url, args.subscribers)
            print(
                f"{args.subscribers} confirmed subscribers inserted (COPY) "
                f"in {time.perf_counter() - t:.1f} s"
            )
            send_id = common.create_send(db_url, args.batch_size)
            extra = dkim_env(workdir) if args.dkim else {}
            env = common.settings_env(db_url, sink.url, batch_size=args.batch_size, extra=extra)
            os.environ.update(env)  # before worker.broker is imported: the bench enqueues on Redis
            from worker import actors

            connections = args.processes * args.threads
            before_rate, _ = common.smtp_source(
                sink.port,
                messages=args.subscribers,
                sessions=connections,
                size=args.reference_size,
            )

            workers = common.start_workers(
                env,
                processes=args.processes,
                threads=args.threads,
                log=workdir / "dramatiq.log",
                module=args.actors,
            )
            try:
                workers.wait_ready(args.processes)
                cpu0 = workers.cpu_seconds()
                sink0 = common.cpu_of(sink.process.pid)
                t0 = time.perf_counter()
                actors.plan_send.send(send_id)
                status = None
                deadline = time.monotonic() + args.timeout
                while time.monotonic() < deadline:
                    time.sleep(0.5)
                    workers.sample_rss()
                    status = common.ledger(db_url, send_id)["status"]
                    if status in ("finished", "cancelled"):
                        break
                wall = time.perf_counter() - t0
                cpu = workers.cpu_seconds() - cpu0
                sink_cpu = common.cpu_of(sink.process.pid) - sink0
                pg_cpu = common.postgres_cpu(db_url)
            finally:
                workers.stop()
            book = common.ledger(db_url, send_id)
            sizes = message_sizes(env, send_id)
        size = int(statistics.mean(sizes.values()))
        sink0 = common.cpu_of(sink.process.pid)
        c_rate, source_cpu = common.smtp_source(
            sink.port, messages=args.subscribers, sessions=connections, size=size
        )
        c_sink_cpu = common.cpu_of(sink.process.pid) - sink0
        third_rate, _ = common.smtp_source(
            sink.port, messages=args.subscribers, sessions=connections, size=size
        )
        references = [before_rate, c_rate, third_rate]
        reference = statistics.median(references)
    finally:
        sink.stop()
        common.flush_redis(os.environ.get("NEWSLETTER_QUEUE_NAMESPACE"))
    counts = book["counts"]
    sent = int(counts.get("sent", 0))
    first, last, started = book["first"], book["last"], book["started"]
    assert first and last and started, f"send {send_id} never claimed a delivery"
    window = (last - first).total_seconds()
    planning = (first - started).total_seconds()
    app_rate = sent / window
    peak = max((sum(s.values()) for _, s in workers.samples), default=0)
    print(f"send {send_id}: status {status}, ledger {dict(counts)}")
    print(f"message size per language (bytes): {sizes}")
    print(f"planning (render + ledger insert, until the first claim): {planning:.1f} s")
    print(
        f"sending window (first claim to last outcome): {window:.1f} s; "
        f"wall from enqueue: {wall:.1f} s"
    )
    n = max(sent, 1)
    print(
        f"CPU per message, app path: workers {1000 * cpu / n:.2f} ms, PostgreSQL backends "
        f"{1000 * pg_cpu / n:.2f} ms, smtp-sink {1000 * sink_cpu / n:.2f} ms "
        f"(total {1000 * (cpu + pg_cpu + sink_cpu) / n:.2f} ms; Redis not counted)"
    )
    print(
        f"CPU per message, C path: smtp-source {1000 * source_cpu / args.subscribers:.2f} ms, "
        f"smtp-sink {1000 * c_sink_cpu / args.subscribers:.2f} ms "
        f"(total {1000 * (source_cpu + c_sink_cpu) / args.subscribers:.2f} ms)"
    )
    print(f"peak RSS of the {args.processes} worker processes together: {peak / 1024:.0f} MiB")
    print(f"actors: {args.actors}")
    print(
        f"app: {app_rate:.0f} messages/s over {connections} connections "
        f"({args.processes} processes x {args.threads} threads)"
        f"{' with in-app DKIM' if args.dkim else ''}"
    )
    source = common.smtp_source_command(
        "PORT", messages=args.subscribers, sessions=connections, size=size
    )
    runs = ", ".join(f"{rate:.0f}" for rate in references)
    print(
        f"smtp-source: median {reference:.0f} messages/s of three runs "
        f"(before the app at {args.reference_size} bytes, then two after: {runs}) ({source})"
    )
    print(f"ratio app / median smtp-source: {app_rate / reference:.3f}")


def dkim_env(workdir: Path) -> dict[str, str]:
    """A fresh 2048-bit RSA key and the NEWSLETTER_DKIM_* settings that make the app sign."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = workdir / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return {
        "NEWSLETTER_DKIM_SELECTOR": "bench",
        "NEWSLETTER_DKIM_DOMAIN": "example.org",
        "NEWSLETTER_DKIM_PRIVATE_KEY_PATH": str(path),
    }


if __name__ == "__main__":
    started = datetime.now(UTC)
    main()
    print(f"run took {(datetime.now(UTC) - started).total_seconds():.0f} s")
