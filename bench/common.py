"""Shared by the benchmarks: the bench database and environment, percentiles, RSS sampling.

Every bench runs against its own PostgreSQL database (`regent_bench`, never the tests' or a
real one), with DEBUG off, a throwaway SECRET_KEY and its data under `var/bench/`.
Benchmarks print figures; they never assert timings (SECURITY.md §0 principle 12).
"""

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
BENCH_DIR = REPO_ROOT / "var" / "bench"
DATA_DIR = BENCH_DIR / "data"
LOG_DIR = BENCH_DIR / "logs"

PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("BENCH_PG_PORT", "5432")
PG_USER = os.environ.get("BENCH_PG_USER", "postgres")
BENCH_DB = os.environ.get("BENCH_DB", "regent_bench")
DATABASE_URL = f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{BENCH_DB}"
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/14")

OWNER = "bench"  # owns every seeded model
VIEWER = "bench-viewer"  # sees ~1 % of them through teams
VIEWER_GROUP_PREFIX = "bench-team-"
MODEL_PREFIX = "bench-model-"


def bench_env(*, broker: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a bench process (this one or a server/worker it starts)."""
    env = {
        "DJANGO_SETTINGS_MODULE": "registry_site.settings",
        "DATABASE_URL": DATABASE_URL,
        "DEBUG": "0",
        "SECRET_KEY": "bench-only-not-a-secret-" + "x" * 40,
        "REGENT_DATA_DIR": str(DATA_DIR),
        # `testserver` is the host Django's test Client sends (bench/pages.py).
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    if broker:
        env["CELERY_BROKER_URL"] = BROKER_URL
    env.update(extra)
    return env


def subprocess_env(**overrides: str) -> dict[str, str]:
    """os.environ without anything that would point a child elsewhere, plus the bench env."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CELERY_BROKER_URL", "REGENT_ARTIFACTS", "DJANGO_ALLOW_ASYNC_UNSAFE")
    }
    env.update(overrides)
    return env


def ensure_database() -> bool:
    """Create the bench database if it is missing; True if it was created."""
    import psycopg
    from psycopg import sql

    admin = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
        return True


def setup_django(*, migrate: bool = True, broker: bool = False) -> None:
    """Point this process at the bench database, set Django up and migrate it."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    os.environ.update(bench_env(broker=broker))
    if not broker:
        os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.pop("REGENT_ARTIFACTS", None)  # the bench always stores under var/bench/
    DATA_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    (DATA_DIR / "static").mkdir(exist_ok=True)  # STATIC_ROOT: WhiteNoise warns when missing
    if ensure_database():
        print(f"created database {BENCH_DB}")
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)


# --- Statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """The `pct` percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain aligned text table (first column left-aligned, the rest right-aligned)."""
    cells = [[str(header) for header in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        return "  ".join(parts).rstrip()

    print(line(cells[0]))
    print("  ".join("-" * width for width in widths))
    for row in cells[1:]:
        print(line(row))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.1f}"
    return str(value)


class Stopwatch:
    """`with Stopwatch() as sw: ...` then `sw.seconds`."""

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def mib(n_bytes: float) -> float:
    return n_bytes / (1024 * 1024)


def machine_line() -> str:
    """CPUs and load average: figures taken on a busy machine are not comparable."""
    one, five, _ = os.getloadavg()
    return f"machine: {os.cpu_count()} CPUs, load average {one:.2f} (1 min) {five:.2f} (5 min)"


# --- Memory: /proc/<pid>/status -------------------------------------------------------------


def proc_status_kib(pid: int, field_name: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS: resident now, VmHWM: peak), or None."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def rss_kib(pid: int) -> int | None:
    return proc_status_kib(pid, "VmRSS")


def hwm_kib(pid: int) -> int | None:
    return proc_status_kib(pid, "VmHWM")


def reset_hwm(pid: int) -> bool:
    """Reset the process's peak-RSS mark (`echo 5 > /proc/<pid>/clear_refs`); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (all threads' children, from /proc)."""
    children: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            path = f"/proc/{pid}/task/{task}/children"
            with contextlib.suppress(FileNotFoundError), open(path) as found:
                children += [int(child) for child in found.read().split()]
    return children


@dataclass
class Track:
    """RSS samples of one process."""

    label: str
    pid: int
    baseline_kib: int = 0
    peak_kib: int = 0
    last_kib: int = 0
    samples: int = 0


@dataclass
class RssSampler:
    """Samples the VmRSS of some processes every `interval` seconds in a thread.

    `mark_baseline()` records the current RSS as the baseline and resets the peak (and,
    where the kernel allows, each process's VmHWM, so `hwm()` is the exact peak since then,
    including spikes between two samples).
    """

    interval: float = 0.1
    tracks: list[Track] = field(default_factory=list)
    hwm_reset: bool = False

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, label: str, pid: int) -> None:
        self.tracks.append(Track(label, pid))

    def mark_baseline(self) -> None:
        with self._lock:
            self.hwm_reset = all([reset_hwm(track.pid) for track in self.tracks])
            for track in self.tracks:
                current = rss_kib(track.pid) or 0
                track.baseline_kib = track.peak_kib = track.last_kib = current

    def sample(self) -> None:
        with self._lock:
            for track in self.tracks:
                current = rss_kib(track.pid)
                if current is None:
                    continue
                track.last_kib = current
                track.peak_kib = max(track.peak_kib, current)
                track.samples += 1

    def hwm(self, track: Track) -> int | None:
        return hwm_kib(track.pid) if self.hwm_reset else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "RssSampler":
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


@contextlib.contextmanager
def step(message: str) -> Iterator[None]:
    """Print `message…` then how long the step took."""
    print(f"{message}…", end="", flush=True)
    start = time.perf_counter()
    yield
    print(f" {time.perf_counter() - start:.1f} s", flush=True)
