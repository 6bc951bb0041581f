"""Catalog reads shared by pages and the API, permission-filtered and N+1-free.

Every read that can reach another model (parents, lineage) filters through
`access.models_visible_to(user)`, so a version the user may not view is never named.
"""

from typing import Any

from django.db.models import Count, IntegerField, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404

from apps.registry import access
from apps.registry.models import ModelVersion, RegisteredModel, VersionParent
from apps.registry.paths import model_name_key

# Lineage bounds: a hostile or accidental deep/wide graph costs at most this much.
LINEAGE_MAX_DEPTH = 50
LINEAGE_MAX_NODES = 1000
_LINEAGE_FIELDS = ("id", "number", "status", "training_data", "model__name")


def _clean_query_text(value: str) -> str:
    # PostgreSQL cannot take NUL in a query parameter; it can never match stored text anyway.
    return value.replace("\x00", "").strip()


def _filter_tag(queryset: QuerySet[RegisteredModel], tag: str) -> QuerySet[RegisteredModel]:
    """`k:v` matches that tag value; `k` matches any model carrying tag `k`."""
    key, sep, value = _clean_query_text(tag).partition(":")
    if sep:
        return queryset.filter(tags__contains={key: value})
    return queryset.filter(tags__has_key=key)


def with_version_stats(queryset: QuerySet[RegisteredModel]) -> QuerySet[RegisteredModel]:
    """Annotate `latest_version`, `latest_status` and `version_count` in the same query.

    Correlated subqueries, not a join + GROUP BY: the page's 25 rows are computed after
    sorting and slicing, instead of grouping every version of every visible model first.
    """
    versions = ModelVersion.objects.filter(model=OuterRef("pk"))
    latest = versions.order_by("-number")
    counted = versions.order_by().values("model").annotate(n=Count("pk")).values("n")
    return queryset.annotate(
        latest_version=Subquery(latest.values("number")[:1]),
        latest_status=Subquery(latest.values("status")[:1]),
        version_count=Coalesce(Subquery(counted, output_field=IntegerField()), 0),
    )


def model_list(
    user: Any, *, search: str = "", tag: str | None = None, include_archived: bool = False
) -> QuerySet[RegisteredModel]:
    """The models `user` may view, by name; `search` covers name and description."""
    queryset = access.models_visible_to(user)
    if not include_archived:
        queryset = queryset.filter(archived_at__isnull=True)
    search = _clean_query_text(search)
    if search:
        queryset = queryset.filter(
            Q(name_key__contains=model_name_key(search)) | Q(description__icontains=search)
        )
    if tag:
        queryset = _filter_tag(queryset, tag)
    return (
        with_version_stats(queryset)
        .select_related("created_by")
        .prefetch_related(_stages_with_holders())
        .order_by("name_key")
    )


def _stages_with_holders() -> Prefetch:
    from apps.approvals.models import Stage  # approvals builds on the registry, not back

    return Prefetch("stages", queryset=Stage.objects.select_related("current_version"))


def model_detail(user: Any, name: str, action: str = "view") -> RegisteredModel:
    """The model named `name` (404 if not visible, 403 if `action` is not allowed)."""
    return attach_version_stats(access.access_model(user, name, action))


def attach_version_stats(model: RegisteredModel) -> RegisteredModel:
    """Set `latest_version`, `latest_status` and `version_count` on one model (one query)."""
    stats = with_version_stats(RegisteredModel.objects.filter(pk=model.pk)).values(
        "latest_version", "latest_status", "version_count"
    )
    for attribute, value in stats.get().items():
        setattr(model, attribute, value)
    return model


def model_stage_summary(model: RegisteredModel) -> dict[str, int | None]:
    """Stage name → the version number holding it (None: empty), in stage order.

    Uses the stages prefetched by `model_list`; otherwise one query.
    """
    stages = model.stages.all()
    if not _is_prefetched(model, "stages"):
        stages = stages.select_related("current_version")
    ordered = sorted(stages, key=lambda stage: (stage.position, stage.name))
    return {
        stage.name: stage.current_version.number if stage.current_version else None
        for stage in ordered
    }


def _is_prefetched(instance: Any, relation: str) -> bool:
    return relation in getattr(instance, "_prefetched_objects_cache", {})


def _visible_parents(user: Any) -> Prefetch:
    # A parent in a model the viewer may not see is left out rather than named.
    parents = ModelVersion.objects.filter(model__in=access.models_visible_to(user))
    return Prefetch(
        "parents",
        queryset=parents.select_related("model").order_by("model__name_key", "number"),
        to_attr="visible_parents",
    )


def version_list(model: RegisteredModel, user: Any = None) -> QuerySet[ModelVersion]:
    """Versions of `model`, newest first, with files, creator and the parents `user` may view.

    Pass the viewer as `user`: parents are filtered by what they may see (None sees none).
    """
    return (
        model.versions.select_related("created_by")
        .prefetch_related("files", "held_stages", _visible_parents(user))
        .order_by("-number")
    )


def version_detail(version: ModelVersion, user: Any = None) -> ModelVersion:
    """Reload `version` (resolved by `access.access_version`) with files, creator and the
    parents `user` may view, as `visible_parents` (three queries)."""
    model = version.model
    version = version_list(model, user).get(pk=version.pk)
    version.model = model
    return version


def _related_versions(user: Any, **lookup: Any) -> list[ModelVersion]:
    visible = access.models_visible_to(user)
    related = ModelVersion.objects.filter(model__in=visible, **lookup).select_related("model")
    return list(related.order_by("model__name_key", "number"))


def version_parents(user: Any, version: ModelVersion) -> list[ModelVersion]:
    """The direct parents of `version` that `user` may view."""
    return _related_versions(user, child_links__child=version)


def version_children(user: Any, version: ModelVersion) -> list[ModelVersion]:
    """The versions derived directly from `version` that `user` may view."""
    return _related_versions(user, parent_links__parent=version)


class _Lineage:
    """Nodes and edges collected breadth-first, with a cap on the number of nodes."""

    def __init__(self, max_nodes: int) -> None:
        self.max_nodes = max_nodes
        self.nodes: dict[str, dict[str, Any]] = {}
        self.version_ids: dict[int, str] = {}
        self.edges: dict[tuple[str, str, str], dict[str, str]] = {}
        self.truncated = False

    def _room(self) -> bool:
        if len(self.nodes) < self.max_nodes:
            return True
        self.truncated = True
        return False

    def add_version(self, row: dict[str, Any]) -> bool:
        """Add a version node (and its datasets); False if there was no room for it."""
        if row["id"] in self.version_ids:
            return True
        if not self._room():
            return False
        node_id = f"version:{row['model__name']}/{row['number']}"
        self.version_ids[row["id"]] = node_id
        self.nodes[node_id] = {
            "id": node_id,
            "type": "version",
            "model": row["model__name"],
            "version": row["number"],
            "status": row["status"],
        }
        for reference in row["training_data"] or []:
            self._add_dataset(reference, node_id)
        return True

    def _add_dataset(self, reference: dict[str, Any], version_node: str) -> None:
        node_id = f"data:{reference['uri']}"
        if node_id not in self.nodes:
            if not self._room():
                return
            self.nodes[node_id] = {
                "id": node_id,
                "type": "dataset",
                "uri": reference["uri"],
                "sha256": reference.get("sha256"),
            }
        self.add_edge(node_id, version_node, "training_data")

    def add_edge(self, source: str, target: str, kind: str) -> None:
        self.edges.setdefault((source, target, kind), {"from": source, "to": target, "kind": kind})

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": list(self.nodes.values()),
            "edges": list(self.edges.values()),
            "truncated": self.truncated,
        }


def _lineage_step(
    graph: _Lineage, visible: QuerySet[RegisteredModel], frontier: list[int], *, up: bool
) -> list[int]:
    """One level of the walk (one query): the parents (`up`) or children of `frontier`."""
    near, far = ("child", "parent") if up else ("parent", "child")
    links = VersionParent.objects.filter(
        **{f"{near}_id__in": frontier, f"{far}__model__in": visible}
    ).order_by(f"{far}__model__name_key", f"{far}__number")
    columns = [f"{far}__{field}" for field in _LINEAGE_FIELDS]
    following = []
    for link in links.values(f"{near}_id", *columns):
        row = {field: link[f"{far}__{field}"] for field in _LINEAGE_FIELDS}
        is_new = row["id"] not in graph.version_ids
        if not graph.add_version(row):
            continue
        near_node, far_node = graph.version_ids[link[f"{near}_id"]], graph.version_ids[row["id"]]
        parent, child = (far_node, near_node) if up else (near_node, far_node)
        graph.add_edge(parent, child, "parent")
        if is_new:
            following.append(row["id"])
    return following


def _lineage_walk(
    graph: _Lineage, visible: QuerySet[RegisteredModel], start: list[int], *, up: bool
) -> None:
    frontier = start
    for _ in range(LINEAGE_MAX_DEPTH):
        if not frontier:
            return
        frontier = _lineage_step(graph, visible, frontier, up=up)
    if frontier:
        graph.truncated = True  # deeper than LINEAGE_MAX_DEPTH levels


def lineage_graph(
    user: Any, model: RegisteredModel, version: ModelVersion | None = None
) -> dict[str, Any]:
    """Ancestors and descendants of `version` (or of every version of `model`).

    Returns {"nodes", "edges", "truncated"}: version nodes `version:<model>/<n>`, dataset
    nodes `data:<uri>`, edges parent → child ("parent") and dataset → version
    ("training_data"). Every hop is filtered by what `user` may view, so hidden versions are
    neither returned nor counted, nor walked through. One query per level and direction,
    at most LINEAGE_MAX_DEPTH levels each way and LINEAGE_MAX_NODES nodes.
    """
    visible = access.models_visible_to(user)
    start = ModelVersion.objects.filter(model=model, model__in=visible).order_by("-number")
    if version is not None:
        start = start.filter(pk=version.pk)
    graph = _Lineage(LINEAGE_MAX_NODES)
    for row in start.values(*_LINEAGE_FIELDS)[: LINEAGE_MAX_NODES + 1]:
        graph.add_version(row)
    if version is not None and not graph.version_ids:
        raise Http404("Not found.")
    start_ids = list(graph.version_ids)
    _lineage_walk(graph, visible, start_ids, up=True)
    _lineage_walk(graph, visible, start_ids, up=False)
    return graph.as_dict()
