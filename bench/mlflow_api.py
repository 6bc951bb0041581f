"""The same model registry workload against Regent's MLflow API and a real `mlflow server`.

    .venv/bin/python -m bench.mlflow_api [--quick] [--only regent|mlflow] [--keep]
                                         [--port 8790]

1. MLflow: a throwaway virtualenv under var/bench/mlflow-venv (reused while it holds the
   wanted version) with `pip install mlflow==3.17.2`, the full server. It is started twice
   on loopback, each time on a fresh SQLite file (`mlflow db upgrade` first, not timed):
   as shipped (`mlflow server`, 4 uvicorn workers and the job runner) and lean
   (`--workers 1`, `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`: the API only).
2. Regent: its production web server (`python -m registry_site.serve`: granian) and a real
   Celery worker (`celery -A registry_site worker -P threads -c 4`, as in
   docs/OPERATIONS.md) on the bench PostgreSQL database and Redis db 14, as user
   `bench-mlflow` with a read-write token.
3. On each server, the workload twice: with the stock client (`mlflow.MlflowClient` from
   the project's .venv — one requests session, HTTP keep-alive) and with a new connection
   per request (`http.client`, `Connection: close`, the same REST calls the client makes):
   create N models x V versions (source `s3://bench/run/model`), G `get_registered_model`
   and G `get_model_version`, S `search_registered_models` and S `search_model_versions`
   with a filter, M moves of the free alias `champion` (the stock client's
   `set_registered_model_alias` is two requests: a model get, then the alias POST). Each
   call is timed and checked.
4. Start-up: process start → first 200 from `/health` (MLflow) or `/healthz` (Regent);
   Regent's own modules are byte-compiled first, as pip compiled both servers' packages.
   Memory: VmRSS summed over each process tree (and PSS, which counts pages shared between
   forked processes once) just after start-up, and the highest RSS sum during the workload.

Prints ops/s and p50/p95 per operation, backend and mode; Regent ÷ MLflow's best per
operation; start-up seconds and memory. Figures only, no assertions. Every process started
here is stopped in `finally`; Regent's bench models are deleted at the end unless `--keep`.
"""

import argparse
import contextlib
import gzip
import http.client
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

MLFLOW_VERSION = "3.17.2"
MLFLOW_VENV = common.BENCH_DIR / "mlflow-venv"
MLFLOW_DIR = common.BENCH_DIR / "mlflow"  # the MLflow server's working directory
MLFLOW_DB = common.BENCH_DIR / "mlflow.db"
API = "/api/2.0/mlflow"
SOURCE = "s3://bench/run/model"
ALIAS = "champion"
USER = "bench-mlflow"
START_TIMEOUT = 180.0  # MLflow as shipped takes 6-30 s on two busy cores
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 120.0
SEED = 20_240_601
# MLflow 3 clients and servers fetch a telemetry config from the internet: loopback only here.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}

H2H_MLFLOW = "MLflow lean, side by side"
H2H_REGENT = "Regent, side by side"
OPERATIONS = [
    "create model",
    "create version",
    "get model",
    "get version",
    "search models",
    "search versions",
    "set alias",
]


@dataclass(frozen=True)
class Workload:
    models: int
    versions: int
    gets: int
    searches: int
    moves: int


FULL = Workload(models=200, versions=5, gets=1000, searches=100, moves=200)
QUICK = Workload(models=20, versions=2, gets=100, searches=10, moves=20)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 x 2, 100 gets, 10 searches")
    parser.add_argument("--only", choices=["regent", "mlflow"], help="run one side only")
    parser.add_argument("--port", type=int, default=8790, help="first of the ports used")
    parser.add_argument("--keep", action="store_true", help="keep Regent's bench models")
    parser.add_argument(
        "--turns",
        type=int,
        default=25,
        help="calls per turn when MLflow lean and Regent run side by side (0: skip that run)",
    )
    return parser.parse_args(argv)


# --- Processes ------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current in found:
            continue
        found.append(current)
        todo += common.child_pids(current)
    return found


def pss_kib(pid: int) -> int | None:
    """Proportional set size: shared pages divided among the processes sharing them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


@dataclass
class Memory:
    rss_kib: int
    pss_kib: int
    processes: int


def command_line(pid: int, width: int = 72) -> str:
    """A short command line: paths cut to their last part."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    line = " ".join(Path(arg).name if arg.startswith("/") else arg for arg in argv if arg)
    return line if len(line) <= width else line[: width - 1] + "…"


def breakdown(roots: list[int]) -> list[str]:
    """One line per process of the trees: RSS, PSS, command."""
    lines = []
    for pid in [pid for root in roots for pid in descendants(root)]:
        rss, pss = common.rss_kib(pid) or 0, pss_kib(pid) or 0
        lines.append(f"{rss / 1024:7.0f} {pss / 1024:7.0f}  {command_line(pid)}")
    return lines


def tree_memory(pids: list[int]) -> Memory:
    every = [pid for root in pids for pid in descendants(root)]
    rss = sum(common.rss_kib(pid) or 0 for pid in every)
    pss = sum(pss_kib(pid) or 0 for pid in every)
    return Memory(rss, pss, len(every))


class PeakRss:
    """Samples the RSS sum of some process trees every `interval` seconds in a thread."""

    def __init__(self, roots: list[int], interval: float = 0.25) -> None:
        self.roots = roots
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def sample(self) -> None:
        pids = [pid for root in self.roots for pid in descendants(root)]
        self.peak_kib = max(self.peak_kib, sum(common.rss_kib(pid) or 0 for pid in pids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "PeakRss":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


@dataclass
class Server:
    """A process started here, in its own session; `stop()` ends it and everything below it."""

    label: str
    popen: subprocess.Popen
    log: Path
    started: float

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM to its process group, then SIGKILL to the group and to every process seen
        below it (MLflow's job runner leaves huey consumers behind when its parent goes)."""
        tree = descendants(self.popen.pid)
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        for pid in tree:
            if pid != self.popen.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=STOP_TIMEOUT)


def launch(label: str, command: list[str], env: dict[str, str], cwd: Path) -> Server:
    common.LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = common.LOG_DIR / f"mlflow-api-{label}.log"
    with log.open("wb") as out:
        started = time.perf_counter()
        popen = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(label, popen, log, started)


def wait_until(predicate: Callable[[], bool], server: Server, what: str) -> float:
    """Seconds from the server's start until `predicate()` holds."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if predicate():
            return time.perf_counter() - server.started
        if server.popen.poll() is not None:
            raise RuntimeError(f"{server.label} exited early:\n{server.tail()}")
        time.sleep(0.05)
    raise TimeoutError(f"{what} not after {START_TIMEOUT:.0f} s:\n{server.tail()}")


def answers(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()


# --- MLflow ---------------------------------------------------------------------------------


def mlflow_bin(name: str) -> str:
    return str(MLFLOW_VENV / "bin" / name)


def ensure_mlflow_venv() -> None:
    """A virtualenv with the full `mlflow` package, reused while it has the wanted version."""
    probe = [mlflow_bin("python"), "-c", "import mlflow; print(mlflow.__version__)"]
    if Path(mlflow_bin("python")).exists():
        found = subprocess.run(probe, capture_output=True, text=True, check=False)
        if found.stdout.strip() == MLFLOW_VERSION:
            print(f"Reusing {MLFLOW_VENV.relative_to(common.REPO_ROOT)} (mlflow {MLFLOW_VERSION})")
            return
    with common.step(f"Installing mlflow=={MLFLOW_VERSION} into a throwaway virtualenv"):
        shutil.rmtree(MLFLOW_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
        pip = [
            mlflow_bin("python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ]
        subprocess.run([*pip, "--upgrade", "pip"], check=True, capture_output=True)
        subprocess.run([*pip, f"mlflow=={MLFLOW_VERSION}"], check=True, capture_output=True)


def mlflow_env(**extra: str) -> dict[str, str]:
    drop = ("MLFLOW_", "VIRTUAL_ENV", "PYTHONPATH", "DJANGO_", "DATABASE_URL", "CELERY_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(drop)}
    env["PATH"] = f"{MLFLOW_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(NO_TELEMETRY)
    env.update(extra)
    return env


def reset_mlflow_db() -> str:
    """A fresh SQLite file with MLflow's schema (created here, so start-up is not charged)."""
    MLFLOW_DIR.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{MLFLOW_DB}{suffix}").unlink(missing_ok=True)
    uri = f"sqlite:///{MLFLOW_DB}"
    upgrade = [mlflow_bin("mlflow"), "db", "upgrade", uri]
    subprocess.run(upgrade, cwd=MLFLOW_DIR, env=mlflow_env(), check=True, capture_output=True)
    return uri


def start_mlflow(label: str, port: int, *, lean: bool) -> Server:
    uri = reset_mlflow_db()
    command = [mlflow_bin("mlflow"), "server", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    extra = {}
    if lean:
        command += ["--workers", "1"]
        extra["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return launch(label, command, mlflow_env(**extra), MLFLOW_DIR)


# --- Regent ---------------------------------------------------------------------------------


def regent_token() -> str:
    from django.contrib.auth.hashers import make_password

    from apps.accounts.models import User
    from apps.accounts.services import token_create

    user, _ = User.objects.update_or_create(
        username=USER,
        defaults={
            "email": "mlflow@bench.invalid",
            "is_active": True,
            "password": make_password(None),
        },
    )
    _, plaintext = token_create(user=user, name="bench mlflow_api", scope="write", expires_days=1)
    return plaintext


def compile_regent() -> None:
    """Byte-compile Regent's own modules, as an image build (or any earlier start) leaves
    them: where PYTHONDONTWRITEBYTECODE is set, every start would otherwise compile them
    again. (pip already compiled both servers' installed packages.) Not timed."""
    command = [str(common.VENV_BIN / "python"), "-m", "compileall", "-q", "apps", "registry_site"]
    subprocess.run(command, cwd=common.REPO_ROOT, check=True, capture_output=True)


def start_regent_web(port: int, env: dict[str, str]) -> Server:
    """The production web server (`python -m registry_site.serve`); WEB_* variables set
    around the bench reach it (to try a change on the same workload)."""
    command = [str(common.VENV_BIN / "python"), "-m", "registry_site.serve"]
    return launch("regent-web", command, {**env, "WEB_HOST": "127.0.0.1"}, common.REPO_ROOT)


def start_regent_worker(env: dict[str, str]) -> Server:
    celery = str(common.VENV_BIN / "celery")
    purge = [celery, "-A", "registry_site", "purge", "-f"]
    subprocess.run(purge, cwd=common.REPO_ROOT, env=env, capture_output=True, check=False)
    command = [celery, "-A", "registry_site", "worker", "--loglevel=INFO", "-P", "threads"]
    command += ["-c", "4", "-n", "bench-mlflow@%h"]
    return launch("celery", command, env, common.REPO_ROOT)


def cleanup_regent(prefix: str) -> None:
    from apps.registry.models import RegisteredModel

    try:
        RegisteredModel.objects.filter(name__startswith=prefix).delete()
    except Exception as error:  # e.g. a PROTECT added later: leave them, say so
        print(f"Could not delete Regent's bench models {prefix}*: {error}")


# --- Clients --------------------------------------------------------------------------------


class StockClient:
    """The stock `MlflowClient`: one requests session per process, so HTTP keep-alive."""

    mode = "keep-alive"

    def __init__(self, port: int) -> None:
        from mlflow import MlflowClient

        url = f"http://127.0.0.1:{port}"
        self.client = MlflowClient(tracking_uri=url, registry_uri=url)

    def create_model(self, name: str) -> None:
        self.client.create_registered_model(name)

    def create_version(self, name: str) -> str:
        version = self.client.create_model_version(name, SOURCE)
        if version.status != "READY":
            raise RuntimeError(f"{name} v{version.version} is {version.status}")
        return version.version

    def get_model(self, name: str) -> None:
        if self.client.get_registered_model(name).name != name:
            raise RuntimeError(f"get_registered_model({name}) returned another model")

    def get_version(self, name: str, version: int) -> None:
        if self.client.get_model_version(name, str(version)).version != str(version):
            raise RuntimeError(f"get_model_version({name}, {version}) returned another version")

    def search_models(self, filter_string: str) -> int:
        return len(self.client.search_registered_models(filter_string=filter_string))

    def search_versions(self, filter_string: str) -> int:
        return len(self.client.search_model_versions(filter_string=filter_string))

    def set_alias(self, name: str, version: int) -> None:
        self.client.set_registered_model_alias(name, ALIAS, str(version))

    def close(self) -> None:
        pass


class FreshClient:
    """The same REST calls as the stock client, each on a new connection (`Connection: close`).

    Bodies, query strings and headers are the ones `MlflowClient` 3.17 sends, checked by
    recording its requests: it appends the prompt exclusion to every model search filter,
    and `set_registered_model_alias` is a `registered-models/get` then the alias POST.
    """

    mode = "fresh"
    PROMPT_FILTER = "tag.`mlflow.prompt.is_prompt` != 'true'"

    def __init__(self, port: int, token: str | None) -> None:
        import mlflow

        self.port = port
        self.headers = {
            "User-Agent": f"mlflow-python-client/{mlflow.__version__}",
            "X-MLflow-Client-Version": mlflow.__version__,
            "Accept-Encoding": "gzip, deflate",
            "Accept": "*/*",
            "Connection": "close",
        }
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = dict(self.headers)
        path = f"{API}/{endpoint}"
        payload = None
        if method == "GET":
            path += "?" + urllib.parse.urlencode(body, doseq=True)
        else:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.getheader("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data) if data else {}

    def create_model(self, name: str) -> None:
        self.call("POST", "registered-models/create", {"name": name})

    def create_version(self, name: str) -> str:
        body = self.call("POST", "model-versions/create", {"name": name, "source": SOURCE})
        version = body["model_version"]
        if version["status"] != "READY":
            raise RuntimeError(f"{name} v{version['version']} is {version['status']}")
        return version["version"]

    def get_model(self, name: str) -> None:
        body = self.call("GET", "registered-models/get", {"name": name})
        if body["registered_model"]["name"] != name:
            raise RuntimeError(f"registered-models/get {name} returned another model")

    def get_version(self, name: str, version: int) -> None:
        body = self.call("GET", "model-versions/get", {"name": name, "version": str(version)})
        if body["model_version"]["version"] != str(version):
            raise RuntimeError(f"model-versions/get {name} {version} returned another version")

    def search_models(self, filter_string: str) -> int:
        query = {"filter": f"{filter_string} AND {self.PROMPT_FILTER}", "max_results": 100}
        return len(self.call("GET", "registered-models/search", query).get("registered_models", []))

    def search_versions(self, filter_string: str) -> int:
        query = {"filter": filter_string, "max_results": 10000}
        return len(self.call("GET", "model-versions/search", query).get("model_versions", []))

    def set_alias(self, name: str, version: int) -> None:
        # The stock client reads the model first (it refuses to alias a prompt).
        self.call("GET", "registered-models/get", {"name": name})
        body = {"name": name, "alias": ALIAS, "version": str(version)}
        self.call("POST", "registered-models/alias", body)

    def close(self) -> None:
        pass


# --- The workload ---------------------------------------------------------------------------


@dataclass
class Timing:
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0

    @property
    def ops_per_s(self) -> float:
        return len(self.latencies) / self.wall if self.wall else float("nan")

    def pct_ms(self, pct: float) -> float:
        return common.percentile(self.latencies, pct) * 1000


@dataclass
class RunResult:
    backend: str
    mode: str
    timings: dict[str, Timing]


def timed(timing: Timing, calls: list[Callable[[], Any]]) -> list[Any]:
    results = []
    start = time.perf_counter()
    for call in calls:
        before = time.perf_counter()
        results.append(call())
        timing.latencies.append(time.perf_counter() - before)
    timing.wall = time.perf_counter() - start
    return results


def model_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:04d}"


Phase = tuple[str, list[Callable[[], Any]], Callable[[list[Any]], None]]


def warm_up(client: Any, prefix: str) -> None:
    """Not timed: the first requests load code and open database connections."""
    warm = f"{prefix}-warm"
    client.create_model(warm)
    client.create_version(warm)
    for _ in range(5):
        client.get_model(warm)
        client.get_version(warm, 1)
        client.search_models(f"name = '{warm}'")
        client.search_versions(f"name = '{warm}'")
        client.set_alias(warm, 1)


def workload_phases(client: Any, prefix: str, work: Workload) -> list[Phase]:
    """Per operation, in order: its calls, and a check of what they returned."""
    rng = random.Random(SEED)
    names = [model_name(prefix, index) for index in range(work.models)]

    def last_version_is_right(numbers: list[Any]) -> None:
        if numbers[-1] != str(work.versions):
            raise RuntimeError(f"the last version created is {numbers[-1]}, not {work.versions}")

    # Models: `prefix-00d%` matches ten names out of the first hundred; versions: one model's.
    buckets = max(1, min(10, work.models // 10))
    model_filters = [f"name LIKE '{prefix}-00{i % buckets}%'" for i in range(work.searches)]

    def every_model_search_finds(found: list[Any]) -> None:
        if min(found) < 1:
            raise RuntimeError(f"a model search found nothing: {model_filters[found.index(0)]}")

    def every_version_search_finds_all(found: list[Any]) -> None:
        if set(found) != {work.versions}:
            raise RuntimeError(f"version searches found {sorted(set(found))}, not {work.versions}")

    def unchecked(results: list[Any]) -> None:
        pass

    model_picks = [rng.randrange(work.models) for _ in range(work.gets)]
    version_picks = [
        (rng.randrange(work.models), rng.randint(1, work.versions)) for _ in range(work.gets)
    ]
    search_picks = [rng.randrange(work.models) for _ in range(work.searches)]
    version_filters = [f"name = '{names[i]}'" for i in search_picks]
    # Alias moves: each of a few models' `champion` walks through its versions.
    movers = max(1, min(work.models, work.moves // work.versions))
    moves = [(j % movers, (j // movers) % work.versions + 1) for j in range(work.moves)]
    return [
        ("create model", [lambda n=n: client.create_model(n) for n in names], unchecked),
        (
            "create version",
            [lambda n=n: client.create_version(n) for n in names for _ in range(work.versions)],
            last_version_is_right,
        ),
        ("get model", [lambda i=i: client.get_model(names[i]) for i in model_picks], unchecked),
        (
            "get version",
            [lambda i=i, v=v: client.get_version(names[i], v) for i, v in version_picks],
            unchecked,
        ),
        (
            "search models",
            [lambda f=f: client.search_models(f) for f in model_filters],
            every_model_search_finds,
        ),
        (
            "search versions",
            [lambda f=f: client.search_versions(f) for f in version_filters],
            every_version_search_finds_all,
        ),
        (
            "set alias",
            [lambda i=i, v=v: client.set_alias(names[i], v) for i, v in moves],
            unchecked,
        ),
    ]


def run_workload(client: Any, prefix: str, work: Workload) -> dict[str, Timing]:
    warm_up(client, prefix)
    timings = {operation: Timing() for operation in OPERATIONS}
    for operation, calls, check in workload_phases(client, prefix, work):
        check(timed(timings[operation], calls))
    return timings


def run_alternating(
    clients: list[tuple[Any, str]], work: Workload, block: int
) -> list[dict[str, Timing]]:
    """The workload on several servers at once, in turns of `block` calls per operation
    (A, B, A, B…, then B, A… for the next operation), so that whatever else the machine
    does weighs on every server alike. Each server's ops/s counts its own turns only."""
    for client, prefix in clients:
        warm_up(client, prefix)
    timings = [{operation: Timing() for operation in OPERATIONS} for _ in clients]
    plans = [workload_phases(client, prefix, work) for client, prefix in clients]
    for step, operation in enumerate(OPERATIONS):
        phases = [plan[step] for plan in plans]
        results: list[list[Any]] = [[] for _ in clients]
        order = list(range(len(clients)))
        if step % 2:
            order.reverse()
        for start in range(0, len(phases[0][1]), block):
            for index in order:
                turn = Timing()
                results[index] += timed(turn, phases[index][1][start : start + block])
                timings[index][operation].latencies += turn.latencies
                timings[index][operation].wall += turn.wall
            order.reverse()
        for index, (_, _, check) in enumerate(phases):
            check(results[index])
    return timings


# --- Driving one backend --------------------------------------------------------------------


@dataclass
class ServerFigures:
    backend: str
    startup_s: float
    idle: Memory
    peak_rss_kib: int
    note: str = ""
    worker_startup_s: float | None = None
    processes: list[str] = field(default_factory=list)


def run_both_modes(
    backend: str, port: int, token: str | None, prefix: str, work: Workload, roots: list[int]
) -> tuple[list[RunResult], int]:
    results = []
    with PeakRss(roots) as peak:
        for client in (StockClient(port), FreshClient(port, token)):
            mode_prefix = f"{prefix}-{'ka' if client.mode == 'keep-alive' else 'fr'}"
            with common.step(f"  {backend}, {client.mode}"):
                timings = run_workload(client, mode_prefix, work)
            results.append(RunResult(backend, client.mode, timings))
    return results, peak.peak_kib


def bench_mlflow(
    label: str, port: int, lean: bool, work: Workload, prefix: str
) -> tuple[list[RunResult], ServerFigures]:
    os.environ.pop("MLFLOW_TRACKING_TOKEN", None)  # no auth on a plain mlflow server
    server = None
    try:
        print(f"Starting {label}…", flush=True)
        server = start_mlflow(
            label.split()[0].lower() + ("-lean" if lean else "-default"), port, lean=lean
        )
        startup = wait_until(lambda: answers(port, "/health"), server, f"{label} /health")
        time.sleep(2)  # let late children (job runner, huey consumers) appear before measuring
        idle = tree_memory([server.popen.pid])
        processes = breakdown([server.popen.pid])
        rss = common.mib(idle.rss_kib * 1024)
        print(f"  up in {startup:.1f} s, {idle.processes} processes, RSS {rss:.0f} MiB")
        results, peak = run_both_modes(label, port, None, prefix, work, [server.popen.pid])
    finally:
        if server is not None:
            server.stop()
    return results, ServerFigures(label, startup, idle, peak, processes=processes)


def bench_regent(
    label: str, port: int, work: Workload, prefix: str, token: str
) -> tuple[list[RunResult], ServerFigures]:
    env = common.subprocess_env(**common.bench_env(broker=True, PORT=str(port)))
    os.environ["MLFLOW_TRACKING_TOKEN"] = token
    servers: list[Server] = []
    try:
        compile_regent()
        print(f"Starting {label}…", flush=True)
        web = start_regent_web(port, env)
        servers.append(web)
        worker = start_regent_worker(env)
        servers.append(worker)
        startup = wait_until(lambda: answers(port, "/healthz"), web, "regent-web /healthz")
        worker_startup = wait_until(
            lambda: " ready." in worker.log.read_text(errors="replace"), worker, "worker ready"
        )
        time.sleep(2)
        roots = [web.popen.pid, worker.popen.pid]
        idle = tree_memory(roots)
        web_idle, worker_idle = tree_memory(roots[:1]), tree_memory(roots[1:])
        processes = breakdown(roots)
        print(
            f"  web up in {startup:.1f} s, worker in {worker_startup:.1f} s; "
            f"{idle.processes} processes, RSS {common.mib(idle.rss_kib * 1024):.0f} MiB "
            f"(web {common.mib(web_idle.rss_kib * 1024):.0f}, worker "
            f"{common.mib(worker_idle.rss_kib * 1024):.0f})"
        )
        results, peak = run_both_modes(label, port, token, prefix, work, roots)
        note = (
            f"web {common.mib(web_idle.rss_kib * 1024):.0f} MiB RSS / "
            f"{common.mib(web_idle.pss_kib * 1024):.0f} PSS ({web_idle.processes} proc), worker "
            f"{common.mib(worker_idle.rss_kib * 1024):.0f} / "
            f"{common.mib(worker_idle.pss_kib * 1024):.0f} ({worker_idle.processes} proc)"
        )
    finally:
        for server in reversed(servers):
            server.stop()
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    figure = ServerFigures(label, startup, idle, peak, note, worker_startup, processes)
    return results, figure


def bench_head_to_head(
    port: int, work: Workload, prefixes: tuple[str, str], token: str, block: int
) -> list[RunResult]:
    """MLflow lean and Regent up together, each driven with a new connection per request,
    in alternating turns (`run_alternating`)."""
    env = common.subprocess_env(**common.bench_env(broker=True, PORT=str(port + 1)))
    servers: list[Server] = []
    try:
        print("Starting MLflow lean and Regent side by side…", flush=True)
        mlflow_server = start_mlflow("mlflow-h2h", port, lean=True)
        servers.append(mlflow_server)
        compile_regent()
        servers.append(start_regent_web(port + 1, env))
        servers.append(start_regent_worker(env))
        wait_until(lambda: answers(port, "/health"), mlflow_server, "MLflow /health")
        wait_until(lambda: answers(port + 1, "/healthz"), servers[1], "regent-web /healthz")
        time.sleep(2)
        clients = [
            (FreshClient(port, None), prefixes[0]),
            (FreshClient(port + 1, token), prefixes[1]),
        ]
        with common.step(f"  alternating turns of {block} calls"):
            mlflow_timings, regent_timings = run_alternating(clients, work, block)
    finally:
        for server in reversed(servers):
            server.stop()
    return [
        RunResult(H2H_MLFLOW, "fresh", mlflow_timings),
        RunResult(H2H_REGENT, "fresh", regent_timings),
    ]


# --- Report ---------------------------------------------------------------------------------


def print_report(results: list[RunResult], figures: list[ServerFigures], work: Workload) -> None:
    print(
        f"\nWorkload: {work.models} models x {work.versions} versions, {work.gets} gets of each "
        f"kind, {work.searches} searches of each kind, {work.moves} alias moves; one client, "
        "sequential calls; loopback."
    )
    rows = []
    for operation in OPERATIONS:
        for result in results:
            timing = result.timings[operation]
            rows.append(
                [
                    operation,
                    result.backend,
                    result.mode,
                    len(timing.latencies),
                    timing.ops_per_s,
                    timing.pct_ms(50),
                    timing.pct_ms(95),
                ]
            )
    common.print_table(["operation", "backend", "mode", "calls", "ops/s", "p50 ms", "p95 ms"], rows)

    sequential = [r for r in results if r.backend not in (H2H_MLFLOW, H2H_REGENT)]
    regent = [result for result in sequential if result.backend.startswith("Regent")]
    mlflow = [result for result in sequential if result.backend.startswith("MLflow")]
    if regent and mlflow:
        print("\nRegent ÷ MLflow's best (highest ops/s of any MLflow set-up and mode); target ≥ 2x")
        rows = []
        for operation in OPERATIONS:
            best = max(mlflow, key=lambda result: result.timings[operation].ops_per_s)
            best_timing = best.timings[operation]
            row: list[object] = [operation, best_timing.ops_per_s, f"{best.backend}, {best.mode}"]
            for result in regent:
                timing = result.timings[operation]
                row += [timing.ops_per_s, f"{timing.ops_per_s / best_timing.ops_per_s:.2f}x"]
            rows.append(row)
        headers = ["operation", "MLflow best ops/s", "which"]
        for result in regent:
            headers += [f"Regent {result.mode}", "ratio"]
        common.print_table(headers, rows)

        print("\nEach mode against MLflow's best in the same mode (p50 ms, lower is better)")
        rows = []
        for operation in OPERATIONS:
            for result in regent:
                same = [m for m in mlflow if m.mode == result.mode]
                best = min(same, key=lambda m: m.timings[operation].pct_ms(50))
                ours, theirs = (
                    result.timings[operation].pct_ms(50),
                    best.timings[operation].pct_ms(50),
                )
                rows.append(
                    [operation, result.mode, theirs, best.backend, ours, f"{theirs / ours:.2f}x"]
                )
        common.print_table(
            ["operation", "mode", "MLflow p50", "which", "Regent p50", "MLflow ÷ Regent"], rows
        )

    paired = {result.backend: result for result in results}
    if H2H_MLFLOW in paired and H2H_REGENT in paired:
        print(
            "\nSide by side, in alternating turns, new connection per request (both servers up;"
            " the same moments for both); target ≥ 2x"
        )
        rows = []
        for operation in OPERATIONS:
            theirs = paired[H2H_MLFLOW].timings[operation]
            ours = paired[H2H_REGENT].timings[operation]
            rows.append(
                [
                    operation,
                    theirs.ops_per_s,
                    theirs.pct_ms(50),
                    ours.ops_per_s,
                    ours.pct_ms(50),
                    f"{ours.ops_per_s / theirs.ops_per_s:.2f}x",
                ]
            )
        common.print_table(
            ["operation", "MLflow ops/s", "p50 ms", "Regent ops/s", "p50 ms", "ratio"], rows
        )

    print("\nStart-up (process start → first 200 from the health URL) and memory (process trees)")
    rows = []
    for figure in figures:
        rows.append(
            [
                figure.backend,
                figure.startup_s,
                figure.idle.processes,
                common.mib(figure.idle.rss_kib * 1024),
                common.mib(figure.idle.pss_kib * 1024),
                common.mib(figure.peak_rss_kib * 1024),
            ]
        )
    common.print_table(
        ["backend", "start-up s", "processes", "RSS MiB", "PSS MiB", "peak RSS MiB"], rows
    )
    for figure in figures:
        if figure.worker_startup_s is not None:
            print(
                f"{figure.backend}: Celery worker ready after {figure.worker_startup_s:.1f} s; "
                f"{figure.note}. Targets: start-up < 3 s, web + worker < 300 MB resident."
            )
    print("\nProcesses just after start-up (RSS MiB, PSS MiB, command)")
    for figure in figures:
        print(f"{figure.backend}:")
        for line in figure.processes:
            print(f"  {line}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = QUICK if args.quick else FULL
    os.environ.update(NO_TELEMETRY)
    common.setup_django(broker=True)
    print(common.machine_line())
    import mlflow  # noqa: F401  (configures its loggers; then quieten them)

    # "Waiting up to 300 seconds for model version to finish creation" on every version.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    run_id = uuid.uuid4().hex[:6]
    results: list[RunResult] = []
    figures: list[ServerFigures] = []
    regent_prefix = f"bench-mlf-{run_id}"
    try:
        if args.only != "regent":
            ensure_mlflow_venv()
            for offset, (label, lean) in enumerate(
                [
                    ("MLflow as shipped (4 workers + jobs)", False),
                    ("MLflow lean (1 worker, API only)", True),
                ]
            ):
                found, figure = bench_mlflow(label, args.port + offset, lean, work, f"bm-{run_id}")
                results += found
                figures.append(figure)
        if args.only != "mlflow":
            token = regent_token()
            label = "Regent (registry_site.serve)"
            port = args.port + 2
            found, figure = bench_regent(label, port, work, regent_prefix, token)
            results += found
            figures.append(figure)
        if args.only is None and args.turns:
            results += bench_head_to_head(
                args.port + 3,
                work,
                (f"bh-{run_id}", f"{regent_prefix}-h2h"),
                token,
                args.turns,
            )
    finally:
        if not args.keep and args.only != "mlflow":
            cleanup_regent(regent_prefix)
    print_report(results, figures, work)
    print(f"\nLogs in {common.LOG_DIR.relative_to(common.REPO_ROOT)}/mlflow-api-*.log")
    print(f"at the end, {common.machine_line()}")


if __name__ == "__main__":
    main()
