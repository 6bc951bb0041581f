"""Lineage: ancestors and descendants, datasets, visibility at every hop, bounds."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.registry import selectors
from apps.registry.models import ModelVersion
from apps.registry.selectors import lineage_graph
from apps.registry.services import model_create, version_create
from tests.conftest import make_user
from tests.registry.conftest import MODELS_URL, grant, token_for

pytestmark = pytest.mark.django_db

D1 = {"uri": "s3://datasets/transactions-2023", "sha256": "1" * 64}
D2 = {"uri": "s3://datasets/chargebacks"}


@pytest.fixture
def family(owner):
    """base/1 → base/2 → ft/1 → distill/1, and ft/1 → secret/1 → after-secret/1.

    carol may view base, ft, distill and after-secret, but not secret.
    """
    carol = make_user("carol")
    models = {}
    for name in ["base", "ft", "distill", "secret", "after-secret"]:
        models[name] = model_create(actor=owner, name=name)
        if name != "secret":
            grant(carol, models[name], "viewer")

    def make(name: str, **kwargs) -> ModelVersion:
        return version_create(actor=owner, model=models[name], **kwargs)

    make("base", training_data=[D1])
    make("base", parents=["base/1"])
    make("ft", parents=["base/2"], training_data=[D2, D1])
    make("distill", parents=["ft/1"])
    make("secret", parents=["ft/1"])
    make("after-secret", parents=["secret/1"])
    return {"models": models, "carol": carol}


def node_ids(graph: dict) -> set[str]:
    return {node["id"] for node in graph["nodes"]}


def edge_set(graph: dict) -> set[tuple[str, str, str]]:
    return {(edge["from"], edge["to"], edge["kind"]) for edge in graph["edges"]}


def version_of(name: str, number: int) -> ModelVersion:
    return ModelVersion.objects.select_related("model").get(model__name=name, number=number)


def test_ancestors_descendants_and_datasets(owner, family):
    graph = lineage_graph(owner, family["models"]["ft"], version_of("ft", 1))
    assert node_ids(graph) == {
        "version:ft/1",
        "version:base/2",
        "version:base/1",
        "version:distill/1",
        "version:secret/1",
        "version:after-secret/1",
        "data:s3://datasets/transactions-2023",
        "data:s3://datasets/chargebacks",
    }
    assert edge_set(graph) == {
        ("version:base/1", "version:base/2", "parent"),
        ("version:base/2", "version:ft/1", "parent"),
        ("version:ft/1", "version:distill/1", "parent"),
        ("version:ft/1", "version:secret/1", "parent"),
        ("version:secret/1", "version:after-secret/1", "parent"),
        ("data:s3://datasets/transactions-2023", "version:base/1", "training_data"),
        ("data:s3://datasets/transactions-2023", "version:ft/1", "training_data"),
        ("data:s3://datasets/chargebacks", "version:ft/1", "training_data"),
    }
    assert graph["truncated"] is False


def test_node_shapes(owner, family):
    graph = lineage_graph(owner, family["models"]["ft"], version_of("ft", 1))
    nodes = {node["id"]: node for node in graph["nodes"]}
    assert graph["nodes"][0]["id"] == "version:ft/1"  # the version asked about comes first
    assert nodes["version:base/2"] == {
        "id": "version:base/2",
        "type": "version",
        "model": "base",
        "version": 2,
        "status": "pending",
    }
    assert nodes["data:s3://datasets/transactions-2023"] == {
        "id": "data:s3://datasets/transactions-2023",
        "type": "dataset",
        "uri": "s3://datasets/transactions-2023",
        "sha256": "1" * 64,
    }
    assert nodes["data:s3://datasets/chargebacks"]["sha256"] is None


def test_siblings_are_not_ancestors_or_descendants(owner, family):
    graph = lineage_graph(owner, family["models"]["distill"], version_of("distill", 1))
    assert "version:secret/1" not in node_ids(graph)
    assert "version:distill/1" in node_ids(graph)
    assert "version:base/1" in node_ids(graph)


def test_without_a_version_every_version_of_the_model_is_a_start(owner, family):
    graph = lineage_graph(owner, family["models"]["base"])
    assert {"version:base/1", "version:base/2", "version:after-secret/1"} <= node_ids(graph)
    assert ("version:base/1", "version:base/2", "parent") in edge_set(graph)


def test_hidden_versions_are_neither_returned_nor_walked_through(family):
    carol = family["carol"]
    graph = lineage_graph(carol, family["models"]["ft"], version_of("ft", 1))
    ids = node_ids(graph)
    assert "version:secret/1" not in ids
    # after-secret is visible to carol, but only reachable through secret: not shown.
    assert "version:after-secret/1" not in ids
    assert {"version:base/1", "version:distill/1"} <= ids
    assert all("secret" not in edge["from"] + edge["to"] for edge in graph["edges"])


def test_hidden_versions_do_not_count_toward_the_node_bound(family, monkeypatch):
    # carol sees exactly 6 nodes: ft/1, its two datasets, base/2, base/1 and distill/1.
    monkeypatch.setattr(selectors, "LINEAGE_MAX_NODES", 6)
    graph = lineage_graph(family["carol"], family["models"]["ft"], version_of("ft", 1))
    assert len(graph["nodes"]) == 6
    assert graph["truncated"] is False
    monkeypatch.setattr(selectors, "LINEAGE_MAX_NODES", 3)
    graph = lineage_graph(family["carol"], family["models"]["ft"], version_of("ft", 1))
    assert len(graph["nodes"]) == 3
    assert graph["truncated"] is True
    assert not any("secret" in node["id"] for node in graph["nodes"])


def test_depth_is_bounded(owner, family, monkeypatch):
    monkeypatch.setattr(selectors, "LINEAGE_MAX_DEPTH", 1)
    graph = lineage_graph(owner, family["models"]["ft"], version_of("ft", 1))
    versions = {node["id"] for node in graph["nodes"] if node["type"] == "version"}
    assert versions == {"version:ft/1", "version:base/2", "version:distill/1", "version:secret/1"}
    assert graph["truncated"] is True


def _queries(user, model, version) -> int:
    with CaptureQueriesContext(connection) as captured:
        lineage_graph(user, model, version)
    return len(captured.captured_queries)


def test_query_count_depends_on_depth_not_width(owner):
    root_model = model_create(actor=owner, name="root")
    root = version_create(actor=owner, model=root_model)
    kids = model_create(actor=owner, name="kids")
    for _ in range(3):
        version_create(actor=owner, model=kids, parents=["root/1"])
    narrow = _queries(owner, root_model, root)
    for _ in range(30):
        version_create(actor=owner, model=kids, parents=["root/1"])
    assert _queries(owner, root_model, root) == narrow
    # 1 start + (1 level + 1 empty level) of children + 1 empty level of parents.
    assert narrow <= 4


def test_long_chain_costs_one_query_per_level(owner):
    model = model_create(actor=owner, name="chain")
    version_create(actor=owner, model=model)
    for number in range(1, 10):
        version_create(actor=owner, model=model, parents=[f"chain/{number}"])
    middle = version_of("chain", 5)
    queries = _queries(owner, model, middle)
    assert len(lineage_graph(owner, model, middle)["nodes"]) == 10
    assert queries <= 1 + 5 + 6


# --- API -------------------------------------------------------------------------------------


def test_lineage_endpoint(api_client, owner, family):
    response = api_client.get(f"{MODELS_URL}/ft/lineage?version=1", **token_for(owner))
    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"nodes", "edges", "truncated"}
    assert ("version:base/2", "version:ft/1", "parent") in edge_set(data)
    assert {"from", "to", "kind"} == set(data["edges"][0])


def test_lineage_endpoint_filters_for_the_caller(api_client, family):
    response = api_client.get(f"{MODELS_URL}/ft/lineage", **token_for(family["carol"]))
    assert response.status_code == 200
    assert not any("secret" in node["id"] for node in response.json()["nodes"])


def test_lineage_of_a_hidden_model_is_404(api_client, family):
    auth = token_for(family["carol"])
    hidden = api_client.get(f"{MODELS_URL}/secret/lineage", **auth)
    missing = api_client.get(f"{MODELS_URL}/nope/lineage", **auth)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()


@pytest.mark.parametrize(("query", "status"), [("9", 404), ("0", 422), ("x", 422), ("-1", 422)])
def test_lineage_of_a_bad_version(api_client, owner, family, query, status):
    response = api_client.get(f"{MODELS_URL}/ft/lineage?version={query}", **token_for(owner))
    assert response.status_code == status
