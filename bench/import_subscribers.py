"""Moving a 100,000-reader list in: ``newsletter subscribers import`` on PostgreSQL (issue 14).

A fresh PostgreSQL database with the schema; a Mailchimp "subscribed" audience export of
``--rows`` readers written the way Mailchimp writes it (every column, opt-in and confirmation
time and IP, ``LANGUAGE`` as ``be_BY`` / ``ru`` / ``English``), 1 % of rows bad (no address, a
time that is not one), 0.5 % duplicates. The command runs as an operator runs it (a separate
process, the ``newsletter`` entry point), first on the empty database, then again on the same file
(the re-import, which must change nothing). Prints the machine, its load before and after, and
the wall time, the CPU time of the command's process and rows per second of each run (on a
shared machine the CPU time is what an idle one would need, plus PostgreSQL's share). Nothing
here asserts a time.

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


def run_import(db_url: str, export: Path) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system) of the command's process, its output."""
    env = {
        **os.environ,
        **common.settings_env(db_url, "smtp://127.0.0.1:1"),
        "NEWSLETTER_BROKER": "stub",
    }
    started = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-c", "from worker.cli import main; main()", "subscribers", "import",
         str(export),
         "--format", "mailchimp"],
        env=env, capture_output=True, text=True, check=True, cwd=common.ROOT,
    )  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, common.database() as db_url:
        export = Path(folder) / "subscribed_members_export_bench.csv"
        write_export(export, args.rows)
        size = export.stat().st_size
        load_before = os.getloadavg()
        first, first_cpu, first_out = run_import(db_url, export)
        again, again_cpu, again_out = run_import(db_url, export)
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
                "first_rows_per_s": round(args.rows / first),
                "first_summary": first_out.strip().splitlines(),
                "reimport_s": round(again, 1),
                "reimport_cpu_s": round(again_cpu, 1),
                "reimport_summary": again_out.strip().splitlines(),
            },
            indent=2,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
