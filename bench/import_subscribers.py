"""Moving a 100,000-reader list in: ``newsletter subscribers import`` on PostgreSQL (issue 14).

A fresh PostgreSQL database with the schema; a Mailchimp "subscribed" audience export of
``--rows`` readers written the way Mailchimp writes it (every column, opt-in and confirmation
time and IP, ``LANGUAGE`` as ``be_BY`` / ``ru`` / ``English``), 1 % of rows bad (no address, a
time that is not one), 0.5 % duplicates. The command runs as an operator runs it (a separate
process, the ``newsletter`` entry point), first on the empty database, then again on the same file
(the re-import, which must change nothing). Prints the machine, its load before and after, and
the wall time, the CPU time of the command's process and of its PostgreSQL backend, and rows
per second of each run: on a shared machine the two CPU times add up to about what an idle one
would take. Nothing here asserts a time.

    .venv/bin/python bench/import_subscribers.py                  # 100,000 rows
    .venv/bin/python bench/import_subscribers.py --rows 10000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common

HEADER = (
    "Email Address", "First Name", "Last Name", "Address", "Phone Number", "Birthday",
    "MEMBER_RATING", "OPTIN_TIME", "OPTIN_IP", "CONFIRM_TIME", "CONFIRM_IP", "LATITUDE",
    "LONGITUDE", "GMTOFF", "DSTOFF", "TIMEZONE", "CC", "REGION", "LAST_CHANGED", "LEID", "EUID",
    "NOTES", "TAGS", "LANGUAGE",
)  # fmt: skip
LANGUAGE_VALUES = ("be_BY", "ru", "English", "be", "", "ru_RU")


def write_export(path: Path, rows: int) -> None:
    """A Mailchimp subscribed-members export of ``rows`` data rows (module docstring)."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(HEADER)
        for n in range(rows):
            email = f"reader{n}@d{n % common.DOMAINS}.example.org"
            if n % 200 == 199:
                email = f"reader{n - 1}@d{(n - 1) % common.DOMAINS}.example.org"  # duplicate
            optin = f"2023-{1 + n % 12:02d}-{1 + n % 28:02d} 08:{n % 60:02d}:02"
            if n % 100 == 37:
                email = ""  # bad: no address
            if n % 100 == 73:
                optin = "not a time"  # bad: refused with its line
            ip = f"198.51.100.{n % 250 + 1}"
            writer.writerow(
                (email, "Name", "", "", "", "", 3, optin, ip, optin.replace("08:", "09:"), ip,
                 "", "", "", "", "", "BY", "", "2024-01-01 00:00:00", n, f"e{n:09x}", "", "",
                 LANGUAGE_VALUES[n % len(LANGUAGE_VALUES)])
            )  # fmt: skip


def run_import(db_url: str, export: Path) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds (user + system) of the command's process and of its PostgreSQL
    backend (sampled every 0.2 s while it runs), and the command's output."""
    env = {
        **os.environ,
        **common.settings_env(db_url, "smtp://127.0.0.1:1"),
        "NEWSLETTER_BROKER": "stub",
    }
    started = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    backends: dict[int, float] = {}
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "from worker.cli import main; main()", "subscribers",
             "import", str(export), "--format", "mailchimp"],
            env=env, stdout=out, stderr=subprocess.DEVNULL, text=True, cwd=common.ROOT,
        )  # fmt: skip
        while process.poll() is None:
            for pid, seconds in _backends(db_url).items():
                backends[pid] = max(seconds, backends.get(pid, 0.0))
            time.sleep(0.2)
        if process.returncode:
            raise SystemExit(f"the import failed with exit code {process.returncode}")
        wall = time.perf_counter() - started
        out.seek(0)
        output = out.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    return wall, own, sum(backends.values()), output


def _backends(db_url: str) -> dict[int, float]:
    name = db_url.rsplit("/", 1)[1]
    with psycopg.connect(common.PG_ADMIN, autocommit=True) as conn:
        pids = [
            int(r[0])
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        ]
    return {pid: common.cpu_of(pid) for pid in pids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, common.database() as db_url:
        export = Path(folder) / "subscribed_members_export_bench.csv"
        write_export(export, args.rows)
        size = export.stat().st_size
        load_before = os.getloadavg()
        first, first_cpu, first_pg, first_out = run_import(db_url, export)
        again, again_cpu, again_pg, again_out = run_import(db_url, export)
        load_after = os.getloadavg()
    print(
        json.dumps(
            {
                "machine": common.machine(),
                "load_before": [round(x, 1) for x in load_before],
                "load_after": [round(x, 1) for x in load_after],
                "rows": args.rows,
                "file_mib": round(size / 2**20, 1),
                "first_import_s": round(first, 1),
                "first_cpu_s": round(first_cpu, 1),
                "first_postgres_cpu_s": round(first_pg, 1),
                "first_rows_per_s": round(args.rows / first),
                "first_summary": first_out.strip().splitlines(),
                "reimport_s": round(again, 1),
                "reimport_cpu_s": round(again_cpu, 1),
                "reimport_postgres_cpu_s": round(again_pg, 1),
                "reimport_summary": again_out.strip().splitlines(),
            },
            indent=2,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
