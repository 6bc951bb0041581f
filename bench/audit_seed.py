"""Top the bench database's audit log up to N events (default 1 000 000), chain intact.

    .venv/bin/python -m bench.seed                  # once: the models the events are about
    .venv/bin/python -m bench.audit_seed [--total 1000000] [--batch 20000]

Events are bulk-inserted (`bulk_create`), bypassing `audit_record` on purpose (no webhook
fan-out, no per-row lock round trip), but each one's hash is computed in Python with
`apps.audit.chain.event_hash`, continuing from the current head, so `manage.py
audit_verify` still finds the chain intact. The append-only trigger refuses UPDATE and
DELETE only: inserts are what it allows. Each batch runs in its own transaction under the
chain's advisory lock and re-reads the head, so a concurrent `audit_record` cannot fork it.

Idempotent: it only adds the events missing to reach `--total` (nothing if already there).
The new events spread over the seeded `bench-model-*` models (~3 % about no model: tokens,
sign-ins), over a year of timestamps (ascending with the id, ending now), a dozen actions,
a few dozen actors (the bench users included) and the web/api/mlflow channels.
"""

import argparse
import random
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

# (action, target type, weight); the target type decides target_id/label and model_id.
ACTIONS = (
    ("version.created", "registry.modelversion", 20),
    ("version.ready", "registry.modelversion", 20),
    ("artifact.downloaded", "registry.modelversion", 25),
    ("model.updated", "registry.registeredmodel", 8),
    ("model.created", "registry.registeredmodel", 2),
    ("promotion.requested", "approvals.promotionrequest", 5),
    ("promotion.approved", "approvals.promotionrequest", 4),
    ("stage.changed", "approvals.stage", 6),
    ("grant.added", "registry.registeredmodel", 3),
    ("version.failed", "registry.modelversion", 2),
    ("token.created", "accounts.apitoken", 3),
    ("user.signed_in", "accounts.user", 2),
)
VIAS = ("web", "api", "api", "mlflow")
AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
    "regent-client/1.4 python-httpx/0.27",
    "mlflow-python-client/2.16.0",
)
SYNTHETIC_ACTORS = 40  # "bench-actor-00".."39", ids past any real user's


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=int, default=1_000_000, help="events wanted in all")
    parser.add_argument("--batch", type=int, default=20_000, help="events per transaction")
    parser.add_argument("--days", type=int, default=365, help="time span of the new events")
    parser.add_argument("--seed", type=int, default=11)
    return parser.parse_args(argv)


def actors() -> list[tuple[int | None, str, int]]:
    """(actor_id, actor_name, weight): the bench users, synthetic people and `system`."""
    from apps.accounts.models import User

    found = list(User.objects.filter(username__startswith="bench").values_list("pk", "username"))
    weights = {common.OWNER: 30, common.VIEWER: 3}
    pool = [(pk, name, weights.get(name, 2)) for pk, name in found]
    pool += [(10_000_000 + i, f"bench-actor-{i:02d}", 1) for i in range(SYNTHETIC_ACTORS)]
    pool.append((None, "system", 4))
    return pool


def model_rows() -> list[tuple[int, str]]:
    from apps.registry.models import RegisteredModel

    return list(
        RegisteredModel.objects.filter(name__startswith=common.MODEL_PREFIX)
        .order_by("pk")
        .values_list("pk", "name")
    )


class EventMaker:
    """Builds the field dicts of synthetic events (everything chained but `at`)."""

    def __init__(self, rng: random.Random, models: list[tuple[int, str]]) -> None:
        self.rng = rng
        self.models = models
        pool = actors()
        self.actors = [(pk, name) for pk, name, _ in pool]
        self.actor_weights = [weight for _, _, weight in pool]
        self.actions = [(action, kind) for action, kind, _ in ACTIONS]
        self.action_weights = [weight for _, _, weight in ACTIONS]

    def fields(self) -> dict[str, Any]:
        rng = self.rng
        actor_id, actor_name = rng.choices(self.actors, self.actor_weights)[0]
        action, kind = rng.choices(self.actions, self.action_weights)[0]
        model_id, model_name = self.models[rng.randrange(len(self.models))]
        number = rng.randint(1, 10)
        changes: dict[str, Any] = {}
        if kind == "registry.modelversion":
            target_id, label = str(model_id * 10 + number), f"{model_name}/{number}"
            if action == "version.created":
                after: dict[str, Any] = {"status": "pending"}
                if number > 1 and number % 2 == 0:
                    after["parents"] = [f"{model_name}/{number - 1}"]
                changes = {"after": after}
            elif action == "artifact.downloaded":
                changes = {"path": "model.safetensors", "bytes": rng.randint(1, 2**31)}
        elif kind == "registry.registeredmodel":
            target_id, label = str(model_id), model_name
            if action == "model.updated":
                changes = {"before": {"description": "old"}, "after": {"description": "new"}}
        elif kind in ("approvals.promotionrequest", "approvals.stage"):
            target_id, label = str(rng.randint(1, 10**6)), f"{model_name} production"
            changes = {"after": {"stage": "production", "version": number}}
        else:  # about no model: tokens, sign-ins
            model_id = None
            uid = actor_id or 1
            target_id = str(uid)
            label = actor_name if kind == "accounts.user" else f"token of {actor_name}"
        return {
            "actor_id": actor_id,
            "actor_name": actor_name,
            "action": action,
            "target_type": kind,
            "target_id": target_id,
            "target_label": label[:300],
            "model_id": model_id,
            "changes": changes,
            "via": rng.choice(VIAS),
            "ip": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            "user_agent": rng.choice(AGENTS),
            "request_id": f"{rng.getrandbits(64):016x}",
        }


def insert_batch(maker: EventMaker, count: int, first_at: Any, step: timedelta) -> int:
    """`count` events chained onto the current head, in one transaction; returns count."""
    from django.db import connection, transaction

    from apps.audit.chain import GENESIS_HASH, event_hash, to_storable_json
    from apps.audit.models import AuditEvent
    from apps.audit.services import CHAIN_LOCK_KEY

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])
        prev = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        prev = prev or GENESIS_HASH
        events = []
        for i in range(count):
            fields = maker.fields()
            fields["changes"] = to_storable_json(fields["changes"])
            fields["at"] = first_at + step * i
            digest = event_hash(prev, fields)
            events.append(AuditEvent(prev_hash=prev, hash=digest, **fields))
            prev = digest
        AuditEvent.objects.bulk_create(events, batch_size=5000)
    return count


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.setup_django()
    from django.db import connection
    from django.utils import timezone

    from apps.audit.models import AuditEvent

    print(common.machine_line())
    existing = AuditEvent.objects.count()
    missing = args.total - existing
    if missing <= 0:
        print(f"{existing:,} audit events already (≥ {args.total:,}): nothing to add.")
        return
    models = model_rows()
    if not models:
        sys.exit("No bench models: run `python -m bench.seed` first.")
    maker = EventMaker(random.Random(args.seed + existing), models)
    now = timezone.now()
    start = now - timedelta(days=args.days)
    step = (now - start) / missing
    print(f"{existing:,} events; adding {missing:,} about {len(models):,} models, batches of "
          f"{args.batch:,}")  # fmt: skip
    added = 0
    began = time.perf_counter()
    while added < missing:
        count = min(args.batch, missing - added)
        added += insert_batch(maker, count, start + step * added, step)
        elapsed = time.perf_counter() - began
        print(f"  {added:>9,} / {missing:,}  {added / elapsed:,.0f} rows/s", flush=True)
    elapsed = time.perf_counter() - began
    print(f"inserted {added:,} events in {elapsed:.1f} s: {added / elapsed:,.0f} rows/s")
    with common.step("VACUUM ANALYZE audit_auditevent"), connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE audit_auditevent")
    print(f"audit events now: {AuditEvent.objects.count():,}")
    print(common.machine_line())


if __name__ == "__main__":
    main()
