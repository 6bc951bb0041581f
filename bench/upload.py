"""Upload throughput, time to `ready` and memory, through the real web server and Celery worker.

    .venv/bin/python -m bench.upload [--mib 1024] [--port 8765] [--claim both|yes|no] [--keep]

1. Makes (or reuses) a file of random bytes under var/bench/.
2. Reference: `shutil.copyfile` of it, then hashlib.sha256 over the copy (the physical
   floor for "receive + store + verify"). The page cache makes this optimistic: both files
   are likely in memory; the server's write and the worker's re-read are just as cached.
3. Starts `python -m registry_site.serve` (granian, 1 process, 4 threads) and a Celery
   worker (solo pool) on the bench
   database and Redis db 14, creates a user, a write token, a model and a version through
   the API, streams the file with http.client (`Content-Length`, socket.sendfile), seals,
   and waits until the version is `ready`. With `--claim both`, once without and once with
   `X-Content-SHA256` (the client's hashing is timed separately and not counted).
4. Samples VmRSS of the server's main process, its worker and the Celery worker every 100 ms
   from /proc (baseline just before the upload, peak during upload + verify; where the
   kernel allows, VmHWM is reset at the baseline so the exact peak is reported too).

Prints figures only; servers are stopped in every case. Without `--keep`, the bench model
and its stored files are deleted at the end.
"""

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

CHUNK = 1024 * 1024
UPLOADER = "bench-uploader"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
FILE_NAME = "model.bin"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="file size in MiB")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--claim", choices=["both", "yes", "no"], default="both")
    parser.add_argument("--repeat", type=int, default=1, help="runs per claim mode (medians)")
    parser.add_argument("--keep", action="store_true", help="keep the model and stored files")
    parser.add_argument("--interval", type=float, default=0.1, help="RSS sampling period (s)")
    return parser.parse_args(argv)


# --- The file and the reference -------------------------------------------------------------


def ensure_file(size_mib: int) -> Path:
    path = common.BENCH_DIR / f"upload-{size_mib}MiB.bin"
    size = size_mib * CHUNK
    if path.exists() and path.stat().st_size == size:
        print(f"Reusing {path.relative_to(common.REPO_ROOT)} ({size_mib} MiB)")
        return path
    common.BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with common.step(f"Writing {size_mib} MiB of random bytes to {path.name}"):
        partial = path.with_suffix(".partial")
        with partial.open("wb") as out:
            for _ in range(size_mib):
                out.write(os.urandom(CHUNK))
        partial.replace(path)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Reference:
    copy_s: float
    hash_s: float
    streamed_s: float  # read → hash → write in 1 MiB chunks, then re-read and hash

    @property
    def total_s(self) -> float:
        return self.copy_s + self.hash_s


def settle() -> None:
    """Flush dirty pages first, so no phase pays for the previous one's writeback."""
    os.sync()


def reference(path: Path) -> Reference:
    """`cp` + `sha256sum` on the same file; and the same work done the server's way."""
    copy = path.with_name(path.stem + ".copy")
    try:
        settle()
        with common.Stopwatch() as copying:
            shutil.copyfile(path, copy)  # in-kernel copy; no fsync, like the server's write
        with common.Stopwatch() as hashing:
            sha256_file(copy)
        copy.unlink()
        settle()
        with common.Stopwatch() as streamed:
            digest = hashlib.sha256()
            with path.open("rb") as source, copy.open("wb") as target:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    target.write(chunk)
            sha256_file(copy)
    finally:
        copy.unlink(missing_ok=True)
    return Reference(copying.seconds, hashing.seconds, streamed.seconds)


# --- Processes ------------------------------------------------------------------------------


@dataclass
class Process:
    label: str
    popen: subprocess.Popen
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL of its process group after STOP_TIMEOUT."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)  # it leads its own session
            self.popen.wait(timeout=STOP_TIMEOUT)


def start(label: str, command: list[str], env: dict[str, str]) -> Process:
    common.LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = common.LOG_DIR / f"{label}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            command,
            cwd=common.REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(label, popen, log)


def wait_for(predicate: Any, process: Process, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.label} exited early:\n{process.tail()}")
        time.sleep(0.1)
    raise TimeoutError(f"{what} not after {START_TIMEOUT}s:\n{process.tail()}")


SERVER_COMMAND = [str(common.VENV_BIN / "python"), "-m", "registry_site.serve"]


def start_server(port: int, env: dict[str, str]) -> Process:
    """The production server (its defaults), one process of 4 threads on the bench port."""
    size = {"PORT": str(port), "WEB_HOST": "127.0.0.1", "WEB_WORKERS": "1", "WEB_THREADS": "4"}
    print(f"\n  server: {' '.join(SERVER_COMMAND[1:])} ({size})", end="", flush=True)
    server = start("regent-web", SERVER_COMMAND, {**env, **size})

    def healthy() -> bool:
        try:
            status, _ = request("GET", port, "/healthz")
        except OSError:
            return False
        return status == 200

    wait_for(healthy, server, "regent-web answering /healthz")
    return server


def start_worker(env: dict[str, str]) -> Process:
    celery = str(common.VENV_BIN / "celery")
    purge = [celery, "-A", "registry_site", "purge", "-f"]
    subprocess.run(purge, cwd=common.REPO_ROOT, env=env, capture_output=True, check=False)
    command = [celery, "-A", "registry_site", "worker", "-P", "solo", "--loglevel", "INFO"]
    command += ["-n", "bench-upload@%h", "--without-gossip", "--without-mingle"]
    command += ["--without-heartbeat"]
    worker = start("celery", command, env)
    wait_for(lambda: " ready." in worker.log.read_text(errors="replace"), worker, "worker ready")
    return worker


def server_worker_pid(master: int) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        children = common.child_pids(master)
        if children:
            return children[0]
        time.sleep(0.1)
    raise TimeoutError("regent-web has no worker process")


# --- HTTP -----------------------------------------------------------------------------------


def request(
    method: str, port: int, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Accept": "application/json"}
    payload = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data) if data else None
    except ValueError:
        return response.status, data[:500]


def put_file(port: int, path: str, file: Path, token: str, claim: str | None) -> tuple[int, Any]:
    """Stream `file` as the raw body (Content-Length set, sendfile from disk)."""
    size = file.stat().st_size
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    try:
        conn.putrequest("PUT", path, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(size))
        if claim:
            conn.putheader("X-Content-SHA256", claim)
        conn.endheaders()
        with file.open("rb") as stream, contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sock.sendfile(stream)  # an early error response closes the socket: read it
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data) if data else None
    except ValueError:
        return response.status, data[:500]


def expect(status: int, body: Any, wanted: int, what: str) -> Any:
    if status != wanted:
        raise RuntimeError(f"{what}: expected {wanted}, got {status}: {body}")
    return body


# --- One run --------------------------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    status: str
    upload_s: float
    ready_s: float
    claim_hash_s: float
    tracks: list[common.Track]
    hwm_kib: dict[str, int | None]

    @property
    def total_s(self) -> float:
        return self.upload_s + self.ready_s


def wait_ready(version_id: int, timeout: float = 3600.0) -> str:
    """Poll the version's status in the database every 20 ms until it is terminal."""
    from apps.registry.models import ModelVersion

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = ModelVersion.objects.filter(pk=version_id).values_list("status", flat=True).get()
        if status in ("ready", "failed"):
            return status
        time.sleep(0.02)
    raise TimeoutError(f"version {version_id} still not verified after {timeout}s")


def one_run(
    args: argparse.Namespace,
    *,
    label: str,
    claim: bool,
    file: Path,
    model: str,
    token: str,
    sampler: common.RssSampler,
) -> RunResult:
    from apps.registry.models import ModelVersion

    claim_hash_s = 0.0
    digest = None
    if claim:
        with common.Stopwatch() as hashing:
            digest = sha256_file(file)
        claim_hash_s = hashing.seconds
    base = f"/api/v1/models/{model}/versions"
    status, body = request("POST", args.port, base, {"description": label}, token)
    number = expect(status, body, 201, "create version")["version"]
    version_id = ModelVersion.objects.get(model__name=model, number=number).pk
    settle()
    sampler.mark_baseline()
    with common.Stopwatch() as uploading:
        status, body = put_file(
            args.port, f"{base}/{number}/files/{FILE_NAME}", file, token, digest
        )
    expect(status, body, 201, "upload")
    with common.Stopwatch() as verifying:
        status, body = request("POST", args.port, f"{base}/{number}/seal", None, token)
        expect(status, body, 202, "seal")
        final = wait_ready(version_id)
    sampler.sample()
    hwm = {track.label: sampler.hwm(track) for track in sampler.tracks}
    tracks = [common.Track(**vars(track)) for track in sampler.tracks]
    return RunResult(label, final, uploading.seconds, verifying.seconds, claim_hash_s, tracks, hwm)


def print_run(result: RunResult, size: int, ref: Reference) -> None:
    mib = common.mib(size)
    print(f"\n== {result.label}: version {result.status}")
    if result.claim_hash_s:
        print(f"  client sha256 for the claim (not counted): {result.claim_hash_s:.2f} s")
    print(
        f"  upload (PUT → 201):           {result.upload_s:7.2f} s  "
        f"{mib / result.upload_s:7.1f} MiB/s"
    )
    print(f"  seal → ready (worker hash):   {result.ready_s:7.2f} s")
    print(
        f"  upload + verify:              {result.total_s:7.2f} s  vs reference "
        f"{ref.total_s:.2f} s → ratio {result.total_s / ref.total_s:.2f}x (target ≤ 2x)"
    )
    print(
        f"  vs the same work in-process: {ref.streamed_s:.2f} s → ratio "
        f"{result.total_s / ref.streamed_s:.2f}x (HTTP + Django + task overhead)"
    )
    for track in result.tracks:
        growth = track.peak_kib - track.baseline_kib
        hwm = result.hwm_kib.get(track.label)
        exact = f", VmHWM {hwm / 1024:.1f}" if hwm else ""
        print(
            f"  RSS {track.label:<16} baseline {track.baseline_kib / 1024:7.1f} MiB, peak "
            f"{track.peak_kib / 1024:7.1f} MiB{exact}, growth {growth / 1024:+7.1f} MiB "
            f"({track.samples} samples)"
        )


def print_medians(results: list[RunResult], ref: Reference) -> None:
    print(f"\n== medians over the runs (reference {ref.total_s:.2f} s)")
    rows = []
    for label in dict.fromkeys(result.label for result in results):
        mine = [result for result in results if result.label == label]
        totals = [result.total_s for result in mine]
        rows.append(
            (
                label,
                len(mine),
                f"{common.percentile([result.upload_s for result in mine], 50):.2f}",
                f"{common.percentile([result.ready_s for result in mine], 50):.2f}",
                f"{common.percentile(totals, 50):.2f}",
                f"{min(totals):.2f}-{max(totals):.2f}",
                f"{common.percentile(totals, 50) / ref.total_s:.2f}x",
                max(
                    (track.peak_kib - track.baseline_kib) / 1024
                    for result in mine
                    for track in result.tracks
                    if track.label == "web worker"
                ),
            )
        )
    headers = ["run", "n", "upload s", "ready s", "total s", "total range", "ratio", "srv +MiB"]
    common.print_table(headers, rows)


# --- Main -----------------------------------------------------------------------------------


def uploader_token() -> str:
    from django.contrib.auth.hashers import make_password

    from apps.accounts.models import User
    from apps.accounts.services import token_create

    user, _ = User.objects.update_or_create(
        username=UPLOADER,
        defaults={
            "email": "uploader@bench.invalid",
            "is_active": True,
            "password": make_password(None),
        },
    )
    _, plaintext = token_create(user=user, name="bench upload", scope="write", expires_days=1)
    return plaintext


def cleanup(model_name: str) -> None:
    """Delete the bench model (cascading to its versions and files' rows) and its objects."""
    from apps.registry.models import RegisteredModel

    model = RegisteredModel.objects.filter(name=model_name).first()
    if model is None:
        return
    stored = common.DATA_DIR / "artifacts" / "models" / str(model.pk)
    try:
        model.delete()
    except Exception as error:  # e.g. a PROTECT added later: leave it, say so
        print(f"Could not delete model {model_name}: {error}")
        return
    shutil.rmtree(stored, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.setup_django(broker=True)
    print(common.machine_line())
    file = ensure_file(args.mib)
    size = file.stat().st_size
    sha256_file(file)  # read once: the reference and the upload both start from the cache
    ref = reference(file)
    print(
        f"Reference on the same file: copyfile {ref.copy_s:.2f} s + sha256 {ref.hash_s:.2f} s = "
        f"{ref.total_s:.2f} s ({common.mib(size) / ref.total_s:.1f} MiB/s). Page cache: optimistic."
    )
    print(
        f"In-process floor (read→sha256→write in 1 MiB chunks, then re-read + sha256): "
        f"{ref.streamed_s:.2f} s"
    )

    env = common.subprocess_env(**common.bench_env(broker=True))
    token = uploader_token()
    model_name = f"bench-upload-{uuid.uuid4().hex[:8]}"
    processes: list[Process] = []
    results: list[RunResult] = []
    try:
        with common.step("Starting regent-web (1 process, 4 threads) and a Celery worker (solo)"):
            server = start_server(args.port, env)
            processes.append(server)
            processes.append(start_worker(env))
        worker = processes[1]
        sampler = common.RssSampler(interval=args.interval)
        sampler.add("web main", server.popen.pid)
        sampler.add("web worker", server_worker_pid(server.popen.pid))
        sampler.add("celery worker", worker.popen.pid)
        status, body = request("POST", args.port, "/api/v1/models", {"name": model_name}, token)
        expect(status, body, 201, "create model")
        request("GET", args.port, f"/api/v1/models/{model_name}", None, token)  # warm
        runs = {"no": [False], "yes": [True], "both": [False, True]}[args.claim] * args.repeat
        with sampler:
            for claim in runs:
                label = "with X-Content-SHA256" if claim else "without checksum claim"
                results.append(
                    one_run(
                        args,
                        label=label,
                        claim=claim,
                        file=file,
                        model=model_name,
                        token=token,
                        sampler=sampler,
                    )
                )
    finally:
        for process in reversed(processes):
            process.stop()
        if not args.keep:
            cleanup(model_name)
    print(f"\nFile: {common.mib(size):.0f} MiB; model {model_name}; logs in var/bench/logs/")
    for result in results:
        print_run(result, size, ref)
    if args.repeat > 1:
        print_medians(results, ref)
    if len(results) > 1:
        print("\n== across the runs (first baseline → highest peak)")
        for index, first in enumerate(results[0].tracks):
            peak = max(result.tracks[index].peak_kib for result in results)
            print(
                f"  RSS {first.label:<16} {first.baseline_kib / 1024:7.1f} → "
                f"{peak / 1024:7.1f} MiB ({(peak - first.baseline_kib) / 1024:+.1f} MiB)"
            )
    print(f"\nat the end, {common.machine_line()}")


if __name__ == "__main__":
    main()
