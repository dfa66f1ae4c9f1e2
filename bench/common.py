"""What every benchmark suite shares: results beside their baselines, saved as JSON.

A suite module ``bench/<suite>.py`` has ``async def run(options: BenchOptions) -> list[Result]``
and can be run alone with ``python -m bench.<suite>``. Each result carries the baseline measured
in the same run (the raw SQL behind an endpoint timed through psycopg, pgbench's TPS for the
equivalent write, ...), so it reads as a ratio that these noisy machines keep stable.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_PG = os.environ.get(
    "FLASH_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def admin_url(url: str) -> str:
    """A plain libpq connection string for ``url`` (for psycopg and administration)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def database_urls(url: str, name: str) -> tuple[str, str]:
    """Database ``name`` on the server of ``url``: (the ledger's async URL, its libpq URL)."""
    base = make_url(url)
    return (
        base.set(drivername="postgresql+psycopg", database=name).render_as_string(False),
        base.set(drivername="postgresql", database=name).render_as_string(False),
    )


def size_suite_arguments(argv: list[str], prog: str, description: str | None):  # type: ignore[no-untyped-def]
    """The command line of the suites measured at several ledger sizes (api, exporter)."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help="a small smoke run, not saved")
    parser.add_argument("--sizes", type=int, nargs="+", default=(), help="payouts per size")
    parser.add_argument(
        "--keep", action="store_true", help="keep the loaded databases and reuse them"
    )
    parser.add_argument(
        "--load-only", action="store_true", help="with --keep: load the databases, measure nothing"
    )
    args = parser.parse_args(argv)
    if args.load_only and not args.keep:
        parser.error("--load-only needs --keep")
    return args


@dataclass
class BenchOptions:
    postgres_url: str = DEFAULT_PG
    quick: bool = False  # smaller sizes, for a smoke run
    sizes: Sequence[int] = ()


@dataclass
class Result:
    suite: str
    case: str
    metric: str  # e.g. "events/s", "p99 ms", "s"
    value: float
    size: str = ""
    baseline: str = ""  # what the baseline is
    baseline_value: float | None = None
    goal: str = ""
    met: bool | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value


def machine() -> str:
    cpus = os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = 0
    model = _cpu_model()
    return (
        f"{platform.machine()}{f' ({model})' if model else ''}, {cpus} cores, {mem:.0f} GiB, "
        f"Python {platform.python_version()}"
    )


def _cpu_model() -> str | None:
    """The processor's name where the system says it: figures differ from one model to the
    next, so a result is read with it."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def save(suite: str, results: list[Result]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{suite}.json"
    payload = {
        "suite": suite,
        "machine": machine(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": [asdict(r) | {"ratio": r.ratio} for r in results],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    if not ordered:
        return {"p50": 0.0, "p99": 0.0}

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.50), "p99": pick(0.99), "mean": statistics.fmean(ordered)}


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def print_results(results: list[Result]) -> None:
    for r in results:
        base = f"  baseline {r.baseline}: {r.baseline_value:.4g}" if r.baseline_value else ""
        ratio = f"  ratio {r.ratio:.3g}" if r.ratio is not None else ""
        goal = f"  goal {r.goal} {'met' if r.met else 'NOT met'}" if r.goal else ""
        print(
            f"{r.suite:10} {r.case:40} {r.size:>10} {r.value:12.4g} {r.metric}{base}{ratio}{goal}"
        )
