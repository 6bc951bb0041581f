"""MLflow search over raw HTTP: the filter grammar against the database, ordering, opaque
page tokens and a fixed query budget."""

from typing import Any

import pytest

from apps.registry.services import model_create, version_create
from tests.mlflow_compat.conftest import (
    S3,
    assert_error,
)

# --- Search and paging --------------------------------------------------------------------------


@pytest.fixture
def catalog(owner, as_owner):
    for name, team in (
        ("alpha", "risk"),
        ("beta", "risk"),
        ("Gamma", "growth"),
        ("delta", "ops"),
        ("epsilon", ""),
    ):
        model_create(actor=owner, name=name, tags={"team": team} if team else {})
    for run in ("r1", "r2", "r3"):
        as_owner.post("/model-versions/create", {"name": "alpha", "source": S3, "run_id": run})
    as_owner.post(
        "/model-versions/set-tag", {"name": "alpha", "version": "2", "key": "ok", "value": "yes"}
    )
    return as_owner


def names(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [model["name"] for model in response.json().get("registered_models", [])]


def versions(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [f"{v['name']}/{v['version']}" for v in response.json().get("model_versions", [])]


@pytest.mark.parametrize(
    ("filter_string", "expected"),
    [
        ("", ["alpha", "beta", "delta", "epsilon", "Gamma"]),
        ("name = 'beta'", ["beta"]),
        ("name != 'beta'", ["alpha", "delta", "epsilon", "Gamma"]),
        ("name LIKE '%ta'", ["beta", "delta"]),
        ("name LIKE 'gamma'", []),
        ("name ILIKE 'gam%'", ["Gamma"]),
        ("name IN ('alpha', 'delta', 'zeta')", ["alpha", "delta"]),
        ("tags.team = 'risk'", ["alpha", "beta"]),
        ("tags.`team` != 'risk'", ["delta", "Gamma"]),
        ("tag.team LIKE 'g%' AND name = 'Gamma'", ["Gamma"]),
        ("tags.team = 'risk' and tag.`mlflow.prompt.is_prompt` != 'true'", ["alpha", "beta"]),
        ("name = 'x'' OR 1=1 --'", []),
    ],
)
def test_search_registered_models(catalog, filter_string, expected):
    response = catalog.get(
        "/registered-models/search", {"filter": filter_string, "order_by": ["name ASC"]}
    )
    assert sorted(names(response), key=str.casefold) == sorted(expected, key=str.casefold)


@pytest.mark.parametrize(
    "filter_string",
    [
        "name = 'a' OR name = 'b'",
        "name = 'unbalanced",
        "owner = 'x'",
        "tags.team > 'a'",
        "version_number = 1",
        "1=1",
    ],
)
def test_bad_model_filters_are_invalid(catalog, filter_string):
    response = catalog.get("/registered-models/search", {"filter": filter_string})
    assert_error(response, 400, "INVALID_PARAMETER_VALUE", "Invalid filter.*")


def test_search_pages_with_opaque_tokens(catalog):
    seen, token, pages = [], None, 0
    while True:
        params = {"max_results": 2, **({"page_token": token} if token else {})}
        body = catalog.get("/registered-models/search", params).json()
        seen += [model["name"] for model in body.get("registered_models", [])]
        pages += 1
        token = body.get("next_page_token")
        if not token:
            break
    assert seen == ["alpha", "beta", "delta", "epsilon", "Gamma"] and pages == 3
    descending = catalog.get(
        "/registered-models/search", {"order_by": "name DESC", "max_results": 1}
    )
    assert names(descending) == ["Gamma"]
    for params in (
        {"page_token": "not-a-token"},
        {"max_results": 1001},
        {"max_results": 0},
        {"order_by": "owner"},
    ):
        assert_error(
            catalog.get("/registered-models/search", params), 400, "INVALID_PARAMETER_VALUE"
        )


@pytest.mark.parametrize(
    ("filter_string", "expected"),
    [
        ("name = 'alpha'", ["alpha/3", "alpha/2", "alpha/1"]),
        ("name = 'alpha' AND version_number >= 2", ["alpha/3", "alpha/2"]),
        ("version_number = 1", ["alpha/1"]),
        ("version_number != 1", ["alpha/3", "alpha/2"]),
        ("version_number < 2", ["alpha/1"]),
        ("run_id = 'r2'", ["alpha/2"]),
        ("run_id IN ('r1', 'r3')", ["alpha/3", "alpha/1"]),
        ("tags.ok = 'yes'", ["alpha/2"]),
        ("name LIKE 'al%' AND tags.`ok` ILIKE 'Y%'", ["alpha/2"]),
    ],
)
def test_search_model_versions(catalog, filter_string, expected):
    assert versions(catalog.get("/model-versions/search", {"filter": filter_string})) == expected


def test_search_model_versions_orders_and_pages(catalog):
    ordered = catalog.get(
        "/model-versions/search", {"order_by": ["version_number ASC"], "max_results": "2"}
    )
    assert versions(ordered) == ["alpha/1", "alpha/2"]
    token = ordered.json()["next_page_token"]
    rest = catalog.get(
        "/model-versions/search", {"order_by": ["version_number ASC"], "page_token": token}
    )
    assert versions(rest) == ["alpha/3"] and "next_page_token" not in rest.json()
    for bad in (
        "run_id != 'r1'",
        "version_number = 'one'",
        "name = 'a' OR 1=1",
        "source_path = 'x'",
    ):
        assert_error(
            catalog.get("/model-versions/search", {"filter": bad}), 400, "INVALID_PARAMETER_VALUE"
        )


def test_search_costs_a_fixed_number_of_queries(catalog, django_assert_max_num_queries, owner):
    for index in range(10):
        model = model_create(actor=owner, name=f"bulk-{index}")
        version_create(actor=owner, model=model)
    with django_assert_max_num_queries(14):
        body = catalog.get("/registered-models/search", {"max_results": 100}).json()
    assert len(body["registered_models"]) == 15
    with django_assert_max_num_queries(10):
        catalog.get("/model-versions/search", {"max_results": 100})


PROMPT = "tag.`mlflow.prompt.is_prompt` != 'true'"


@pytest.mark.parametrize(
    ("endpoint", "params"),
    [
        ("/registered-models/search", {"filter": f"name LIKE 'al%' AND {PROMPT}"}),
        ("/registered-models/search", {"filter": f"name LIKE 'gam%' AND {PROMPT}"}),  # case
        ("/registered-models/search", {"filter": "name ILIKE 'GAM%'", "order_by": "name DESC"}),
        ("/registered-models/search", {"filter": "name != 'beta'", "max_results": 2}),
        ("/registered-models/search", {"filter": "", "max_results": 2, "order_by": "timestamp"}),
        ("/model-versions/search", {"filter": "name = 'alpha'", "max_results": 2}),
        ("/model-versions/search", {"filter": "name = 'Alpha'"}),  # exact, not case-folded
        ("/model-versions/search", {"filter": "name LIKE '%ph_'", "order_by": "version_number"}),
    ],
)
def test_prepared_search_answers_as_the_plain_query(catalog, endpoint, params, monkeypatch):
    from apps.mlflow_compat import selectors

    prepared = catalog.get(endpoint, params)
    again = catalog.get(endpoint, params)  # the compiled shape, bound to the same values
    monkeypatch.setattr(selectors, "MAX_SEARCH_SHAPES", 0)
    monkeypatch.setattr(selectors, "_search_shapes", set())
    plain = catalog.get(endpoint, params)
    assert prepared.status_code == again.status_code == plain.status_code == 200
    assert prepared.json() == again.json() == plain.json()


def test_prepared_search_keeps_each_callers_visibility(catalog, as_outsider, superuser):
    query = {"filter": f"name LIKE '%a%' AND {PROMPT}"}
    assert names(catalog.get("/registered-models/search", query))
    assert names(as_outsider.get("/registered-models/search", query)) == []
    assert versions(as_outsider.get("/model-versions/search", {"filter": "name = 'alpha'"})) == []
    # A superuser's search binds no user id: the plain query, every live model.
    from apps.mlflow_compat import selectors

    found, _ = selectors.search_models(
        superuser, filter_string=query["filter"], limit=10, order_by=[], page_token=None
    )
    assert [model.name for model in found] == ["alpha", "beta", "delta", "Gamma"]
