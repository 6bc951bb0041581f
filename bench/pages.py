"""Server time and query count of the catalog pages and the list API, at seeded scale.

    .venv/bin/python -m bench.seed            # once: 10 000 models x 10 versions
    .venv/bin/python -m bench.pages [--requests 200] [--only list] [--explain]

In-process, with Django's test `Client` (force_login / a Bearer token) against the bench
database: the time is measured around `client.get` (middleware, view, queries, template —
no network, no gunicorn), the queries with `CaptureQueriesContext`. Each page is requested
`--warmup` times first, then `--requests` times, cycling through different models so the
figures are not those of one hot row. Prints p50/p95/max milliseconds, the query count
(min-max over the requests: it must not move with the data) and the database share.
`--explain` prints EXPLAIN (ANALYZE, BUFFERS) of each page's slowest query.
"""

import argparse
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

TARGET_P95_MS = 100.0


@dataclass
class Page:
    label: str
    who: str  # "owner" or "viewer"
    url: Callable[[int], str]  # request index → URL
    api: bool = False


@dataclass
class Result:
    page: Page
    times_ms: list[float] = field(default_factory=list)
    db_ms: list[float] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    slowest_sql: tuple[float, str] = (0.0, "")
    last_queries: list[tuple[float, str]] = field(default_factory=list)
    skipped: str = ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per page first")
    parser.add_argument("--only", default="", help="run pages whose label contains this")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN the slowest queries")
    parser.add_argument(
        "--queries", action="store_true", help="list each page's queries (last request)"
    )
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args(argv)


def pages(owner_models: list[tuple[str, int]], viewer_models: list[tuple[str, int]]) -> list[Page]:
    """The pages to time. Model and version pages cycle through sampled models."""

    def model(sample: list[tuple[str, int]], suffix: str = "") -> Callable[[int], str]:
        return lambda i: f"/models/{sample[i % len(sample)][0]}/{suffix}"

    def version(sample: list[tuple[str, int]]) -> Callable[[int], str]:
        def url(i: int) -> str:
            name, latest = sample[i % len(sample)]
            return f"/models/{name}/versions/{1 + i % max(1, latest)}/"

        return url

    def api_model(sample: list[tuple[str, int]], suffix: str = "") -> Callable[[int], str]:
        return lambda i: f"/api/v1/models/{sample[i % len(sample)][0]}{suffix}"

    def api_version(sample: list[tuple[str, int]]) -> Callable[[int], str]:
        def url(i: int) -> str:
            name, latest = sample[i % len(sample)]
            return f"/api/v1/models/{name}/versions/{1 + i % max(1, latest)}"

        return url

    def fixed(url: str) -> Callable[[int], str]:
        return lambda i: url

    found: list[Page] = []
    for who, sample in (("owner", owner_models), ("viewer", viewer_models)):
        found += [
            Page("list /models/", who, fixed("/models/")),
            Page("list ?page=50", who, fixed("/models/?page=50")),
            Page("list ?q=fraud (search, ~all)", who, fixed("/models/?q=fraud")),
            Page("list ?q=model-0424 (search, 10)", who, fixed("/models/?q=model-0424")),
            Page("list ?q=team:team-07 (tag)", who, fixed("/models/?q=team%3Ateam-07")),
            Page("model page", who, model(sample)),
            Page("model ?tab=versions", who, model(sample, "?tab=versions")),
            Page("version page", who, version(sample)),
            Page("API models ?page=1", who, fixed("/api/v1/models?page=1"), api=True),
            Page("API models ?page=50", who, fixed("/api/v1/models?page=50"), api=True),
            Page("API models ?search=fraud", who, fixed("/api/v1/models?search=fraud"), api=True),
            Page("API model", who, api_model(sample), api=True),
            Page("API versions", who, api_model(sample, "/versions"), api=True),
            Page("API version", who, api_version(sample), api=True),
        ]
    return found


def sample_models(user: Any, count: int, rng: random.Random) -> list[tuple[str, int]]:
    """Up to `count` (name, last version number) of models `user` may view, shuffled."""
    from apps.registry.access import models_visible_to

    rows = list(
        models_visible_to(user)
        .filter(name__startswith=common.MODEL_PREFIX)
        .values_list("name", "last_version_number")
    )
    rng.shuffle(rows)
    return rows[:count]


def clients(owner: Any, viewer: Any) -> dict[tuple[str, bool], Any]:
    """A signed-in browser client and a Bearer-token API client for each user."""
    from django.test import Client

    from apps.accounts.services import token_create

    made = {}
    for who, user in (("owner", owner), ("viewer", viewer)):
        browser = Client()
        browser.force_login(user)
        _, plaintext = token_create(user=user, name="bench pages", scope="read", expires_days=1)
        made[(who, False)] = browser
        made[(who, True)] = Client(headers={"Authorization": f"Bearer {plaintext}"})
    return made


def measure(page: Page, client: Any, args: argparse.Namespace) -> Result:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    result = Result(page)
    first = client.get(page.url(0))
    if first.status_code == 404:
        result.skipped = f"404 at {page.url(0)}: not there (yet)"
        return result
    if first.status_code != 200:
        result.skipped = f"answered {first.status_code} at {page.url(0)}"
        return result
    for i in range(args.warmup):
        client.get(page.url(i))
    for i in range(args.requests):
        url = page.url(i)
        with CaptureQueriesContext(connection) as captured:
            start = time.perf_counter()
            response = client.get(url)
            elapsed = (time.perf_counter() - start) * 1000
        result.times_ms.append(elapsed)
        result.queries.append(len(captured.captured_queries))
        db = [float(query["time"]) * 1000 for query in captured.captured_queries]
        result.db_ms.append(sum(db))
        result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
        result.last_queries = [
            (ms, query["sql"]) for query, ms in zip(captured.captured_queries, db, strict=True)
        ]
        for ms, sql in result.last_queries:
            if ms > result.slowest_sql[0]:
                result.slowest_sql = (ms, sql)
    return result


def explain(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


def scale() -> dict[str, int]:
    from apps.registry.models import Artifact, ModelVersion, RegisteredModel

    return {
        "models": RegisteredModel.objects.count(),
        "versions": ModelVersion.objects.count(),
        "artifacts": Artifact.objects.count(),
    }


def report(results: list[Result], args: argparse.Namespace) -> None:
    rows = []
    for result in results:
        if result.skipped:
            continue
        queries = sorted(set(result.queries))
        shown = str(queries[0]) if len(queries) == 1 else f"{queries[0]}-{queries[-1]}"
        p95 = common.percentile(result.times_ms, 95)
        rows.append(
            (
                result.page.label,
                result.page.who,
                common.percentile(result.times_ms, 50),
                p95,
                max(result.times_ms),
                shown,
                common.percentile(result.db_ms, 50),
                "" if p95 <= TARGET_P95_MS else "over",
            )
        )
    headers = ["page", "user", "p50 ms", "p95 ms", "max ms", "queries", "db p50 ms", "100ms"]
    common.print_table(headers, rows)
    for result in results:
        if result.skipped:
            print(f"skipped: {result.page.label} ({result.page.who}): {result.skipped}")
        elif set(result.statuses) != {200}:
            print(f"note: {result.page.label} ({result.page.who}) statuses {result.statuses}")
    if args.queries:
        for result in results:
            if result.skipped:
                continue
            print(f"\n=== {result.page.label} ({result.page.who}): queries of the last request")
            for ms, sql in result.last_queries:
                print(f"{ms:7.1f} ms  {sql[:600]}")
    if args.explain:
        for result in results:
            if result.skipped or not result.slowest_sql[1]:
                continue
            ms, sql = result.slowest_sql
            print(f"\n=== {result.page.label} ({result.page.who}): slowest query {ms:.1f} ms")
            print(sql)
            print(explain(sql))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.setup_django()
    from apps.accounts.models import User

    owner = User.objects.filter(username=common.OWNER).first()
    viewer = User.objects.filter(username=common.VIEWER).first()
    if owner is None or viewer is None:
        sys.exit("No bench users: run `python -m bench.seed` first.")
    rng = random.Random(args.seed)
    owner_models = sample_models(owner, 500, rng)
    viewer_models = sample_models(viewer, 500, rng)
    if not owner_models or not viewer_models:
        sys.exit("The bench users see no models: run `python -m bench.seed --reset`.")
    sizes = scale()
    print(
        f"Scale: {sizes['models']:,} models, {sizes['versions']:,} versions, "
        f"{sizes['artifacts']:,} artifacts; owner sees {len(owner_models):,}+ "
        f"(sampled), viewer sees {len(viewer_models):,}"
    )
    print(f"{args.requests} timed requests per page after {args.warmup} warm-up; times in ms")
    print(common.machine_line() + "\n")
    made = clients(owner, viewer)
    results = []
    for page in pages(owner_models, viewer_models):
        if args.only and args.only not in page.label:
            continue
        result = measure(page, made[(page.who, page.api)], args)
        results.append(result)
        p95 = common.percentile(result.times_ms, 95) if result.times_ms else float("nan")
        status = result.skipped or f"p95 {p95:.1f} ms"
        print(f"  {page.label} ({page.who}): {status}", file=sys.stderr, flush=True)
    print()
    report(results, args)
    print("\nat the end, " + common.machine_line())


if __name__ == "__main__":
    main()
