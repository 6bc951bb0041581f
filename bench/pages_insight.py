"""Server time and query count of the compare, trends, lineage and audit pages, at scale.

    .venv/bin/python -m bench.seed                  # once: 10 000 models x 10 versions
    .venv/bin/python -m bench.audit_seed            # once: 1 000 000 audit events
    .venv/bin/python -m bench.pages_insight [--requests 50] [--only audit] [--explain]

The same method as `bench/pages.py` (whose helpers it imports): in-process Django test
`Client` (force_login for pages, a read-only Bearer token for the API), the time taken
around `client.get` (middleware, view, queries, template; no network), the queries with
`CaptureQueriesContext`, `--warmup` untimed requests first. For the export the time also
covers reading the streamed body up to `--export-rows` CSV rows (the response is then
closed), because a streaming response does its work while it is read.

Users: `bench-admin` (a superuser, created if missing), `bench` (owns every model: the
largest non-superuser permission set, past the selector's literal-id-list limit) and
`bench-viewer` (sees ~1 % of the models). The lineage page is the 500-node graph of
`bench/lineage.py` (`lineage-bench-hub` v3), seeded through its `seed()` if missing.
Figures only; nothing is asserted (SECURITY.md §0 principle 12).
"""

import argparse
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench import pages as base

ADMIN = "bench-admin"
LINEAGE_NODES = 500


@dataclass
class Page:
    label: str
    who: str  # "admin", "owner" or "viewer"
    url: Callable[[int], str]
    api: bool = False
    stream_rows: int = 0  # read a streamed body up to this many lines (the export)
    requests: int | None = None  # fewer timed requests for slow pages


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per page first")
    parser.add_argument("--export-requests", type=int, default=10, help="timed exports")
    parser.add_argument("--export-rows", type=int, default=10_000, help="CSV rows read")
    parser.add_argument("--only", default="", help="run pages whose label contains this")
    parser.add_argument("--who", default="", help="only this user: admin, owner or viewer")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN the slowest queries")
    parser.add_argument(
        "--queries", action="store_true", help="list each page's queries (last request)"
    )
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args(argv)


# --- Data ------------------------------------------------------------------------------------


def ensure_admin() -> Any:
    from apps.accounts.models import User

    admin, _ = User.objects.get_or_create(username=ADMIN)
    if not (admin.is_superuser and admin.is_staff and admin.is_active):
        admin.is_superuser = admin.is_staff = admin.is_active = True
        admin.save(update_fields=["is_superuser", "is_staff", "is_active"])
    return admin


def ensure_lineage(owner: Any) -> tuple[str, int]:
    """The 500-node lineage of bench/lineage.py: seeded only if its hub is missing."""
    from apps.registry.models import ModelVersion
    from bench import lineage

    name = lineage.PREFIX + "hub"
    if not ModelVersion.objects.filter(model__name=name, number=3).exists():
        with common.step(f"seeding a {LINEAGE_NODES}-node lineage ({lineage.PREFIX}*)"):
            name, _ = lineage.seed(owner, LINEAGE_NODES)
    return name, 3


def audit_facts() -> dict[str, Any]:
    """Ids and moments the audit URLs need: the head, a deep cursor, a month's range."""
    from django.db.models import Max, Min

    from apps.audit.models import AuditEvent

    span = AuditEvent.objects.aggregate(first=Min("id"), last=Max("id"), newest=Max("at"))
    newest = span["newest"]
    return {
        "count": AuditEvent.objects.count(),
        "head": span["last"] or 0,
        "deep": ((span["first"] or 0) + (span["last"] or 0)) // 2,
        "since": (newest - timedelta(days=60)).date().isoformat() if newest else "",
        "until": (newest - timedelta(days=30)).date().isoformat() if newest else "",
    }


def older_cursor(user: Any) -> int | None:
    """The `?before=` id of the audit page's "older" link for `user`."""
    from apps.audit.selectors import AuditFilters, audit_events_matching, audit_events_page

    return audit_events_page(audit_events_matching(user, AuditFilters())).older_cursor


# --- Pages -----------------------------------------------------------------------------------


def pages_for(
    who: str,
    user: Any,
    sample: list[tuple[str, int]],
    lineage: tuple[str, int] | None,
    facts: dict[str, Any],
    args: argparse.Namespace,
) -> list[Page]:
    def model(suffix: str) -> Callable[[int], str]:
        return lambda i: f"/models/{sample[i % len(sample)][0]}/{suffix}"

    def compare(count: int) -> Callable[[int], str]:
        def url(i: int) -> str:
            name, latest = sample[i % len(sample)]
            query = urlencode([("v", n) for n in range(1, min(count, latest) + 1)])
            return f"/models/{name}/compare/?{query}"

        return url

    def fixed(url: str) -> Callable[[int], str]:
        return lambda i: url

    def audit(params: dict[str, Any], prefix: str = "/audit/") -> Callable[[int], str]:
        query = urlencode(params)
        return lambda i: f"{prefix}?{query}"

    def audit_model(prefix: str, extra: dict[str, Any]) -> Callable[[int], str]:
        return lambda i: prefix + "?" + urlencode({"model": sample[i % len(sample)][0], **extra})

    cursor = older_cursor(user)
    found = [
        Page("compare 2 versions", who, compare(2)),
        Page("compare 8 versions", who, compare(8)),
        Page("model ?tab=trends", who, model("?tab=trends")),
        Page("model ?tab=history", who, model("?tab=history")),
    ]
    if lineage is not None:
        name, number = lineage
        url = fixed(f"/models/{name}/versions/{number}/")
        found.append(Page(f"version + lineage {LINEAGE_NODES}", who, url))
    found += [
        Page("audit unfiltered", who, fixed("/audit/")),
        Page("audit ?model=", who, audit_model("/audit/", {})),
        Page(
            "audit ?actor=&since=&until=",
            who,
            audit({"actor": common.OWNER, "since": facts["since"], "until": facts["until"]}),
        ),
        Page("audit ?actor=viewer (rare)", who, audit({"actor": common.VIEWER})),
    ]
    if cursor is not None:
        found.append(Page("audit older page ?before=", who, audit({"before": cursor})))
    found += [
        Page("audit deep ?before=mid", who, audit({"before": facts["deep"]})),
        Page(
            f"audit export CSV {args.export_rows:,} rows",
            who,
            fixed("/audit/export?format=csv"),
            stream_rows=args.export_rows,
            requests=args.export_requests,
        ),
        Page("API audit ?page=1", who, fixed("/api/v1/audit?page=1"), api=True),
        Page("API audit ?model=", who, audit_model("/api/v1/audit", {}), api=True),
    ]
    return found


def clients(users: dict[str, Any]) -> dict[tuple[str, bool], Any]:
    from django.test import Client

    from apps.accounts.services import token_create

    made = {}
    for who, user in users.items():
        browser = Client()
        browser.force_login(user)
        _, plaintext = token_create(user=user, name="bench insight", scope="read", expires_days=1)
        made[(who, False)] = browser
        made[(who, True)] = Client(headers={"Authorization": f"Bearer {plaintext}"})
    return made


def fetch(client: Any, page: Page, url: str) -> tuple[int, int]:
    """GET `url`; for a streamed body, read it up to `page.stream_rows` lines. (status, lines)"""
    response = client.get(url)
    if not page.stream_rows or not getattr(response, "streaming", False):
        return response.status_code, 0
    lines = 0
    for block in response.streaming_content:
        lines += block.count(b"\n")
        if lines > page.stream_rows:  # the header line + stream_rows rows
            break
    response.close()
    return response.status_code, lines


def measure(page: Page, client: Any, args: argparse.Namespace) -> base.Result:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    result = base.Result(page)  # type: ignore[arg-type]
    status, _ = fetch(client, page, page.url(0))
    if status != 200:
        result.skipped = f"answered {status} at {page.url(0)}"
        return result
    requests = page.requests or args.requests
    for i in range(min(args.warmup, requests)):
        fetch(client, page, page.url(i))
    for i in range(requests):
        url = page.url(i)
        with CaptureQueriesContext(connection) as captured:
            start = time.perf_counter()
            status, _ = fetch(client, page, url)
            elapsed = (time.perf_counter() - start) * 1000
        result.times_ms.append(elapsed)
        result.queries.append(len(captured.captured_queries))
        db = [float(query["time"]) * 1000 for query in captured.captured_queries]
        result.db_ms.append(sum(db))
        result.statuses[status] = result.statuses.get(status, 0) + 1
        result.last_queries = [
            (ms, query["sql"]) for query, ms in zip(captured.captured_queries, db, strict=True)
        ]
        for ms, sql in result.last_queries:
            if ms > result.slowest_sql[0]:
                result.slowest_sql = (ms, sql)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.setup_django()
    from apps.accounts.models import User

    owner = User.objects.filter(username=common.OWNER).first()
    viewer = User.objects.filter(username=common.VIEWER).first()
    if owner is None or viewer is None:
        sys.exit("No bench users: run `python -m bench.seed` first.")
    admin = ensure_admin()
    lineage = ensure_lineage(owner)
    rng = random.Random(args.seed)
    samples = {
        "admin": base.sample_models(admin, 500, rng),
        "owner": base.sample_models(owner, 500, rng),
        "viewer": base.sample_models(viewer, 500, rng),
    }
    facts = audit_facts()
    sizes = base.scale()
    print(
        f"Scale: {sizes['models']:,} models, {sizes['versions']:,} versions, "
        f"{facts['count']:,} audit events; viewer sees {len(samples['viewer']):,} models"
    )
    print(
        f"{args.requests} timed requests per page ({args.export_requests} for the export) "
        f"after {args.warmup} warm-up; times in ms"
    )
    print(common.machine_line() + "\n")
    users = {"admin": admin, "owner": owner, "viewer": viewer}
    if args.who:
        users = {args.who: users[args.who]}
    made = clients(users)
    results = []
    for who, user in users.items():
        graph = lineage if who != "viewer" else None  # the viewer may not view it
        for page in pages_for(who, user, samples[who], graph, facts, args):
            if args.only and args.only not in page.label:
                continue
            result = measure(page, made[(who, page.api)], args)
            results.append(result)
            p95 = common.percentile(result.times_ms, 95) if result.times_ms else float("nan")
            status = result.skipped or f"p95 {p95:.1f} ms"
            print(f"  {page.label} ({who}): {status}", file=sys.stderr, flush=True)
    print()
    base.report(results, args)
    print("\nat the end, " + common.machine_line())


if __name__ == "__main__":
    main()
