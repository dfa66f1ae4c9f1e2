"""Spreadsheet exports in constant memory: the peak RSS of a 100,000-row .xlsx export.

One PostgreSQL database is loaded with 400,000 payouts over four stores (the api suite's
loader); the measured store holds 100,000 of them. Each export runs in a fresh process whose
peak resident set is read when it ends (``wait4``'s ``ru_maxrss``) or, for the API's server,
from ``VmHWM`` after the export:

- `flash-payouts export payouts --format xlsx` of the store's 100,000 payouts, beside the same
  command exporting the newest 10,000 of them (memory that does not grow with the rows is
  the goal: at most 1.25 times the small export's peak);
- the same through the API (`serve --services api`, ``GET /payouts/export?format=xlsx``);
- the time of the 100,000-row spreadsheet beside the CSV of the same rows.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psycopg

from ledger import migrate
from ledger.db import create_engine
from ledger.tokens import create_token

from .api import STORE, load
from .common import BenchOptions, Result, admin_url, database_urls, print_results, save

SUITE = "exports"
ROOT = Path(__file__).resolve().parent.parent
FULL = (400_000, 4_000)  # payouts, cards over four stores: 100,000 in the measured store
QUICK = (40_000, 400)
SMALL_SHARE = 10  # the baseline exports a tenth of the rows
GOAL_RATIO = 1.25
KEY = "5a" * 32


def _env(async_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_")}
    env.update(FLASH_DATABASE_URL=async_url, FLASH_MASTER_KEY=KEY, PYTHONPATH=str(ROOT))
    return env


def command_export(async_url: str, fmt: str, out: Path, start: str | None) -> tuple[float, float]:
    """Run `flash-payouts export payouts`; returns (peak RSS in MiB, seconds)."""
    argv = [sys.executable, "-m", "flash_payouts", "export", "payouts", "--store", STORE]
    argv += ["--format", fmt, "--output", str(out)]
    if start:
        argv += ["--start", start]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=_env(async_url), cwd=ROOT, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode == 0, err
    return usage.ru_maxrss / 1024, seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def api_export(async_url: str, token: str, start: str | None) -> tuple[float, int]:
    """One xlsx export from a fresh API process; returns (its peak RSS in MiB, bytes)."""
    port = _free_port()
    env = {**_env(async_url), "FLASH_API_LISTEN": f"127.0.0.1:{port}", "FLASH_API_RATE": "1000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flash_payouts", "serve", "--services", "api"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        params = {"storeId": STORE, "format": "xlsx", **({"startDate": start} if start else {})}
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                try:
                    async with http.get(f"{base}/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            async with http.get(
                f"{base}/plugins/flash/api/payouts/export",
                params=params,
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=600),
            ) as r:
                assert r.status == 200, await r.text()
                size = len(await r.read())
        return _peak_mib(proc.pid), size
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def newest_start(conninfo: str, rows: int) -> str:
    """The creation time from which the store's newest ``rows`` payouts run."""
    with psycopg.connect(conninfo) as conn:
        at = conn.execute(
            "SELECT created_at FROM payouts WHERE store_id = %s "
            "ORDER BY created_at DESC OFFSET %s LIMIT 1",
            (STORE, rows - 1),
        ).fetchone()[0]
    return at.isoformat()


async def run(options: BenchOptions) -> list[Result]:
    payouts, cards = QUICK if options.quick else FULL
    rows = payouts // 4
    small = rows // SMALL_SHARE
    name = "flash_bench_exports"
    async_url, conninfo = database_urls(options.postgres_url, name)
    with psycopg.connect(admin_url(options.postgres_url), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        await asyncio.to_thread(migrate.upgrade, async_url)
        await asyncio.to_thread(load, conninfo, payouts, cards)
        engine = create_engine(async_url)
        async with engine.begin() as conn:
            _, token = await create_token(conn, STORE, "viewer", "bench")
        await engine.dispose()
        start = newest_start(conninfo, small)
        with tempfile.TemporaryDirectory(prefix="flash-bench-") as tmp:
            out = Path(tmp)
            small_rss, _ = command_export(async_url, "xlsx", out / "small.xlsx", start)
            big_rss, xlsx_s = command_export(async_url, "xlsx", out / "big.xlsx", None)
            xlsx_bytes = (out / "big.xlsx").stat().st_size
            csv_rss, csv_s = command_export(async_url, "csv", out / "big.csv", None)
        api_small, _ = await api_export(async_url, token, start)
        api_big, api_bytes = await api_export(async_url, token, None)
    finally:
        with psycopg.connect(admin_url(options.postgres_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    size, small_size = f"{rows:,} rows", f"{small:,} rows"
    goal = f"<= {GOAL_RATIO} x the {small_size} export"
    return [
        Result(
            suite=SUITE,
            case="xlsx export by the command, peak RSS",
            metric="MiB",
            value=round(big_rss, 1),
            size=size,
            baseline=f"the same command exporting {small_size}",
            baseline_value=round(small_rss, 1),
            goal=goal,
            met=big_rss <= GOAL_RATIO * small_rss,
            notes=f"{xlsx_bytes / 2**20:.1f} MiB file; the CSV of the same rows peaks at "
            f"{csv_rss:.0f} MiB",
        ),
        Result(
            suite=SUITE,
            case="xlsx export by the API server, peak RSS",
            metric="MiB",
            value=round(api_big, 1),
            size=size,
            baseline=f"a fresh API server exporting {small_size}",
            baseline_value=round(api_small, 1),
            goal=goal,
            met=api_big <= GOAL_RATIO * api_small,
            notes=f"GET /payouts/export?format=xlsx, {api_bytes / 2**20:.1f} MiB sent",
        ),
        Result(
            suite=SUITE,
            case="xlsx export by the command, time",
            metric="s",
            value=round(xlsx_s, 2),
            size=size,
            baseline="CSV export of the same rows",
            baseline_value=round(csv_s, 2),
            notes="whole process: start, ledger reads, the workbook written and zipped",
        ),
    ]


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    results = asyncio.run(run(BenchOptions(quick=quick)))
    print_results(results)
    if not quick:
        save(SUITE, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
