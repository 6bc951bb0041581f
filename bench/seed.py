"""Seed the bench database with N models x M versions (default 10 000 x 10) in minutes.

    .venv/bin/python -m bench.seed [--models 10000] [--versions 10] [--reset]

Rows are bulk-inserted in batches, bypassing the services on purpose: no audit events, no
per-row permission calls, no tasks. What it creates (see bench/README.md):

- users `bench` (owner of every model, through guardian's direct-FK rows: view, change,
  manage) and `bench-viewer` (member of `--viewer-groups` teams which together hold `view`
  on ~1 % of the models: the permission-filtered case of SECURITY LD-02);
- `--other-teams` teams, each holding `view` on ~2 % of the models (so the group grant
  table is not trivially small);
- models with a Markdown card, tags and `last_version_number`; versions `ready` with
  metrics, params, tags, training data, dependencies, source; one verified artifact row per
  version (no bytes on disk); a lineage edge for every even version (parent: the previous);
- default stages and policies (what `apps.approvals.services.stages_create_defaults` makes),
  with `production` held on ~30 % of the models and `staging` on ~60 %.

`--reset` empties the registry tables (TRUNCATE … CASCADE) first; without it, seeding into a
database that already holds bench models stops with a message.
"""

import argparse
import hashlib
import random
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

BATCH = 5000
PASSWORD = "bench-password-not-secret"  # so one can sign in to the bench server by hand

WORDS = [
    "classifier",
    "transformer",
    "embedding",
    "fraud",
    "churn",
    "ranking",
    "retrieval",
    "vision",
    "speech",
    "tabular",
    "gradient",
    "boosting",
    "forecasting",
    "anomaly",
    "detection",
    "recommendation",
    "sentiment",
    "summarisation",
    "translation",
    "segmentation",
    "latency",
    "throughput",
    "calibration",
    "fairness",
    "drift",
    "baseline",
    "distilled",
    "quantised",
    "pruned",
    "fine-tuned",
    "multilingual",
    "robust",
    "production",
    "evaluation",
    "holdout",
]
TASKS = ("classification", "regression", "ranking", "nlp", "vision", "forecasting")
FRAMEWORKS = ("pytorch", "onnx", "safetensors", "sklearn", "tensorflow")


class Counter:
    """Rows inserted per table and the time spent."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def insert(self, label: str, model: Any, objects: list[Any]) -> list[Any]:
        start = time.perf_counter()
        created = model.objects.bulk_create(objects, batch_size=BATCH)
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start
        self.rows[label] = self.rows.get(label, 0) + len(objects)
        return created


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def hex64(rng: random.Random) -> str:
    return hashlib.sha256(rng.randbytes(16)).hexdigest()


def model_card(rng: random.Random, name: str) -> str:
    """A Markdown card of ~1 KB, like a real one (the list search scans descriptions)."""
    paragraphs = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(25, 45))).capitalize() + "."
        for _ in range(3)
    ]
    return (
        f"# {name}\n\n{paragraphs[0]}\n\n## Intended use\n\n{paragraphs[1]}\n\n"
        f"## Training data\n\n{paragraphs[2]}\n\n## Metrics\n\n| metric | value |\n|---|---|\n"
        f"| accuracy | {rng.uniform(0.7, 0.99):.3f} |\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=10, help="versions per model")
    parser.add_argument("--owner", default=common.OWNER)
    parser.add_argument("--viewer", default=common.VIEWER)
    parser.add_argument("--viewer-pct", type=float, default=1.0, help="%% of models")
    parser.add_argument("--viewer-groups", type=int, default=20)
    parser.add_argument("--other-teams", type=int, default=50)
    parser.add_argument("--reset", action="store_true", help="empty the registry tables first")
    parser.add_argument("--seed", type=int, default=42, help="random seed")
    return parser.parse_args(argv)


def reset_tables() -> None:
    """TRUNCATE the registry (and everything referencing it: stages, promotions…)."""
    from django.db import connection

    from apps.registry.models import RegisteredModel

    with connection.cursor() as cursor:
        cursor.execute(f'TRUNCATE TABLE "{RegisteredModel._meta.db_table}" CASCADE')


def ensure_users(args: argparse.Namespace) -> tuple[Any, Any, list[Any], list[Any]]:
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group

    from apps.accounts.models import User

    password = make_password(PASSWORD)
    owner, _ = User.objects.update_or_create(
        username=args.owner,
        defaults={"email": f"{args.owner}@bench.invalid", "is_active": True, "password": password},
    )
    viewer, _ = User.objects.update_or_create(
        username=args.viewer,
        defaults={"email": f"{args.viewer}@bench.invalid", "is_active": True, "password": password},
    )
    viewer_groups = [
        Group.objects.get_or_create(name=f"{common.VIEWER_GROUP_PREFIX}{i:02d}")[0]
        for i in range(args.viewer_groups)
    ]
    viewer.groups.add(*viewer_groups)
    other_teams = [
        Group.objects.get_or_create(name=f"bench-other-{i:02d}")[0] for i in range(args.other_teams)
    ]
    return owner, viewer, viewer_groups, other_teams


def registry_permissions() -> dict[str, Any]:
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType

    from apps.registry import access
    from apps.registry.models import RegisteredModel

    content_type = ContentType.objects.get_for_model(RegisteredModel)
    found = Permission.objects.filter(
        content_type=content_type, codename__in=[access.VIEW, access.EDIT, access.MANAGE]
    )
    return {permission.codename: permission for permission in found}


def seed_models(args: argparse.Namespace, rng: random.Random, owner: Any, count: Counter) -> list:
    from apps.registry.models import RegisteredModel, Visibility
    from apps.registry.paths import model_name_key

    width = max(5, len(str(args.models)))
    models = []
    for i in range(args.models):
        name = f"{common.MODEL_PREFIX}{i:0{width}d}"
        models.append(
            RegisteredModel(
                name=name,
                name_key=model_name_key(name),
                description=model_card(rng, name),
                tags={"team": f"team-{i % 40:02d}", "task": rng.choice(TASKS)},
                visibility=Visibility.PRIVATE,
                metric_directions={"accuracy": "higher", "loss": "lower"},
                created_by=owner,
                last_version_number=args.versions,
            )
        )
    return count.insert("models", RegisteredModel, models)


def seed_grants(
    args: argparse.Namespace,
    rng: random.Random,
    models: list[Any],
    owner: Any,
    viewer_groups: list[Any],
    other_teams: list[Any],
    count: Counter,
) -> int:
    from apps.registry import access
    from apps.registry.models import (
        RegisteredModelGroupObjectPermission,
        RegisteredModelUserObjectPermission,
    )

    permissions = registry_permissions()
    owner_rows = [
        RegisteredModelUserObjectPermission(
            user=owner, permission=permissions[codename], content_object_id=model.pk
        )
        for model in models
        for codename in access.ROLE_PERMISSIONS["owner"]
    ]
    for batch in chunks(owner_rows, BATCH):
        count.insert("user grants", RegisteredModelUserObjectPermission, batch)
    view = permissions[access.VIEW]
    step = max(1, round(100 / args.viewer_pct)) if args.viewer_pct > 0 else 0
    viewer_models = models[::step] if step else []
    group_rows = [
        RegisteredModelGroupObjectPermission(
            group=viewer_groups[index % len(viewer_groups)], permission=view, content_object=model
        )
        for index, model in enumerate(viewer_models)
        if viewer_groups
    ]
    for team in other_teams:
        for model in rng.sample(models, max(1, len(models) // 50)):
            group_rows.append(
                RegisteredModelGroupObjectPermission(
                    group=team, permission=view, content_object=model
                )
            )
    for batch in chunks(group_rows, BATCH):
        count.insert("group grants", RegisteredModelGroupObjectPermission, batch)
    return len(viewer_models) if viewer_groups else 0


def _version(rng: random.Random, model: Any, number: int, owner: Any, now: Any) -> Any:
    from apps.registry.models import ModelVersion, VersionStatus

    framework = rng.choice(FRAMEWORKS)
    size = rng.randint(10, 4000) * 1024 * 1024
    team = model.tags["team"]
    return ModelVersion(
        model=model,
        number=number,
        status=VersionStatus.READY,
        description=f"Version {number}: " + " ".join(rng.choice(WORDS) for _ in range(12)),
        metrics={
            "accuracy": round(rng.uniform(0.7, 0.99), 4),
            "f1": round(rng.uniform(0.6, 0.95), 4),
            "loss": round(rng.uniform(0.05, 0.6), 4),
            "latency_ms": round(rng.uniform(2, 80), 1),
        },
        params={"lr": rng.choice([1e-5, 3e-5, 1e-4, 3e-4]), "epochs": rng.randint(1, 30)},
        tags={"git": uuid.UUID(int=rng.getrandbits(128)).hex[:8]},
        training_data=[
            {"uri": f"s3://datasets/{team}/{number:04d}.parquet", "sha256": hex64(rng)},
        ],
        dependencies={"framework": framework, "python": "3.11"},
        source={"run_id": uuid.UUID(int=rng.getrandbits(128)).hex, "commit": hex64(rng)[:40]},
        framework=framework,
        created_by=owner,
        sealed_at=now,
        verified_at=now,
        bytes_total=size,
        bytes_verified=size,
    )


def seed_versions(
    args: argparse.Namespace, rng: random.Random, models: list[Any], owner: Any, count: Counter
) -> dict[int, dict[int, int]]:
    """Versions, their artifact rows and lineage edges; returns {model id: {number: id}}."""
    from django.utils import timezone

    from apps.registry.models import Artifact, ModelVersion, VersionParent

    now = timezone.now()
    per_chunk = max(1, BATCH // max(1, args.versions))
    ids: dict[int, dict[int, int]] = {}
    done, started = 0, time.perf_counter()
    for model_chunk in chunks(models, per_chunk):
        versions = [
            _version(rng, model, number, owner, now)
            for model in model_chunk
            for number in range(1, args.versions + 1)
        ]
        versions = count.insert("versions", ModelVersion, versions)
        for version in versions:
            ids.setdefault(version.model_id, {})[version.number] = version.pk
        count.insert("artifacts", Artifact, [_artifact(rng, version, now) for version in versions])
        edges = [
            VersionParent(
                child_id=version.pk,
                parent_id=ids[version.model_id][version.number - 1],
                relation="fine_tuned_from",
            )
            for version in versions
            if version.number % 2 == 0
        ]
        count.insert("lineage edges", VersionParent, edges)
        done += len(versions)
        rate = done / (time.perf_counter() - started)
        print(f"\r  versions: {done:>9,} ({rate:,.0f}/s)", end="", flush=True)
    print()
    return ids


def _artifact(rng: random.Random, version: Any, now: Any) -> Any:
    from apps.registry.models import Artifact

    path = "model.safetensors" if version.framework == "safetensors" else "model.bin"
    digest = hex64(rng)
    return Artifact(
        version=version,
        path=path,
        path_key=path,
        size=version.bytes_total,
        upload_sha256=digest,
        sha256=digest,
        storage_key=f"models/{version.model_id}/versions/{version.pk}/{uuid.uuid4().hex}",
        kind={"framework": version.framework, "label": version.framework, "details": {}},
        verified_at=now,
    )


def approvals_available() -> bool:
    try:
        from apps.approvals import services
    except ImportError:
        return False
    return hasattr(services, "stages_create_defaults")


def seed_stages(
    rng: random.Random,
    models: list[Any],
    ids: dict[int, dict[int, int]],
    owner: Any,
    count: Counter,
) -> None:
    """What `stages_create_defaults` makes per model, plus holders and their history."""
    from django.utils import timezone

    from apps.approvals.models import DEFAULT_STAGES, Stage, StageAssignment, StagePolicy
    from apps.approvals.services import DEFAULT_REQUIRED_APPROVALS

    now = timezone.now()
    stages = []
    for model in models:
        numbers = ids.get(model.pk, {})
        latest = max(numbers, default=None)
        for name, position in DEFAULT_STAGES:
            holder = None
            if latest is not None and name == "staging" and rng.random() < 0.6:
                holder = numbers[latest]
            elif latest is not None and name == "production" and rng.random() < 0.3:
                holder = numbers[max(1, latest - 1)]
            stages.append(
                Stage(
                    model=model,
                    name=name,
                    position=position,
                    current_version_id=holder,
                    since=now if holder else None,
                )
            )
    stages = count.insert("stages", Stage, stages)
    policies = [
        StagePolicy(stage=stage, required_approvals=DEFAULT_REQUIRED_APPROVALS.get(stage.name, 1))
        for stage in stages
    ]
    count.insert("stage policies", StagePolicy, policies)
    assignments = [
        StageAssignment(
            stage=stage,
            version_id=stage.current_version_id,
            started_at=now,
            assigned_by=owner,
            reason="seeded",
        )
        for stage in stages
        if stage.current_version_id
    ]
    count.insert("stage history", StageAssignment, assignments)


def analyze(tables: Iterable[str]) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f'VACUUM ANALYZE "{table}"')


def touched_tables() -> list[str]:
    from django.apps import apps

    labels = ["registry", "auth", "accounts"]
    if approvals_available():
        labels.append("approvals")
    return [
        model._meta.db_table
        for label in labels
        for model in apps.get_app_config(label).get_models()
        if not model._meta.proxy and model._meta.managed
    ]


def run(args: argparse.Namespace) -> None:
    from django.db import transaction

    from apps.registry.models import RegisteredModel

    print(
        "Note: seeding bypasses the services on purpose (bulk inserts): no audit events, "
        "no tasks, no per-row permission calls."
    )
    print(f"Database: {common.DATABASE_URL}")
    if args.reset:
        with common.step("Emptying the registry tables (TRUNCATE … CASCADE)"):
            reset_tables()
    elif RegisteredModel.objects.filter(name__startswith=common.MODEL_PREFIX).exists():
        sys.exit("The bench database already holds bench models: run with --reset to reseed.")

    rng = random.Random(args.seed)
    count = Counter()
    started = time.perf_counter()
    with transaction.atomic():
        owner, viewer, viewer_groups, other_teams = ensure_users(args)
        with common.step(f"Models ({args.models:,})"):
            models = seed_models(args, rng, owner, count)
        with common.step("Grants"):
            viewer_count = seed_grants(args, rng, models, owner, viewer_groups, other_teams, count)
        print(f"Versions ({args.models * args.versions:,}), artifacts, lineage:")
        ids = seed_versions(args, rng, models, owner, count)
        if approvals_available():
            with common.step("Stages, policies, stage history"):
                seed_stages(rng, models, ids, owner, count)
        else:
            print("apps.approvals.services.stages_create_defaults not found: no stages seeded.")
    inserted = time.perf_counter() - started
    with common.step("VACUUM ANALYZE"):
        analyze(touched_tables())
    total = time.perf_counter() - started

    print()
    rows = [
        (label, n, count.seconds[label], n / count.seconds[label] if count.seconds[label] else 0)
        for label, n in count.rows.items()
    ]
    all_rows = sum(count.rows.values())
    rows.append(("total (inserts)", all_rows, inserted, all_rows / inserted))
    common.print_table(["table", "rows", "seconds", "rows/s"], rows)
    print()
    print(f"Seeded {args.models:,} models x {args.versions} versions in {total:.1f} s")
    print(
        f"  owner {owner.username!r} owns all {len(models):,}; viewer {viewer.username!r} sees "
        f"{viewer_count:,} through {len(viewer_groups)} teams; {len(other_teams)} other teams."
    )
    print(f"  sign-in password of both bench users: {PASSWORD}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.setup_django()
    run(args)


if __name__ == "__main__":
    main()
