"""Query budgets of the MLflow endpoints the stock client calls most (bench/mlflow_api.py).

Counts include the token lookup, and the SAVEPOINT/RELEASE pairs the test transaction turns
every `transaction.atomic` into (BEGIN/COMMIT in production, not counted by Django). The
bearer token is used once first, so its once-a-minute `last_used_at` write is not counted.
"""

import pytest

from tests.mlflow_compat.conftest import S3, create_version


@pytest.fixture
def warm(as_editor, ml_model):
    """The editor's token used once, and one version with a free alias."""
    create_version(as_editor)
    response = as_editor.post(
        "/registered-models/alias",
        {"name": "fraud-detector", "alias": "champion", "version": "1"},
    )
    assert response.status_code == 200, response.content
    return as_editor


def test_get_model_is_three_queries(warm, django_assert_max_num_queries):
    with django_assert_max_num_queries(3):  # token, model with stages and aliases, versions
        response = warm.get("/registered-models/get", {"name": "fraud-detector"})
    assert response.status_code == 200
    assert response.json()["registered_model"]["aliases"] == [{"alias": "champion", "version": "1"}]


def test_get_version_is_two_queries(warm, django_assert_max_num_queries):
    with django_assert_max_num_queries(2):  # token, version with model, stages and aliases
        response = warm.get("/model-versions/get", {"name": "fraud-detector", "version": "1"})
    assert response.status_code == 200
    assert response.json()["model_version"]["aliases"] == ["champion"]


def test_a_missing_version_costs_one_more_query(warm, django_assert_max_num_queries):
    with django_assert_max_num_queries(3):
        response = warm.get("/model-versions/get", {"name": "fraud-detector", "version": "9"})
    assert response.status_code == 404


def test_search_models_is_three_queries(warm, django_assert_max_num_queries):
    with django_assert_max_num_queries(3):  # token, page of models, their versions
        response = warm.get(
            "/registered-models/search",
            {"filter": "name LIKE 'fraud%' AND tag.`mlflow.prompt.is_prompt` != 'true'"},
        )
    assert [m["name"] for m in response.json()["registered_models"]] == ["fraud-detector"]


def test_search_versions_is_two_queries(warm, django_assert_max_num_queries):
    with django_assert_max_num_queries(2):  # token, page of versions
        response = warm.get("/model-versions/search", {"filter": "name = 'fraud-detector'"})
    assert len(response.json()["model_versions"]) == 1


def test_create_model_stays_small(warm, django_assert_max_num_queries):
    # token, and one statement: the model with its owner grants, stages and policies and its
    # audit event (in a savepoint and its release inside the test's transaction).
    with django_assert_max_num_queries(4):
        response = warm.post("/registered-models/create", {"name": "churn"})
    assert response.status_code == 200, response.content


@pytest.mark.django_db(transaction=True)
def test_create_model_outside_a_transaction_is_the_token_and_one_statement(
    warm, django_assert_num_queries
):
    # The statement commits by itself: no BEGIN and no COMMIT either (Django logs neither).
    with django_assert_num_queries(2) as queries:
        response = warm.post("/registered-models/create", {"name": "churn"})
    assert response.status_code == 200, response.content
    assert "audit_auditevent" in queries.captured_queries[1]["sql"]


def test_create_version_stays_small(warm, django_assert_max_num_queries):
    # token, model, then one statement: the model row's number, the version (sealed in it),
    # its two audit events and the webhook look-up (in a savepoint and its release inside
    # the test's transaction); no reload to answer.
    with django_assert_max_num_queries(5):
        response = warm.post("/model-versions/create", {"name": "fraud-detector", "source": S3})
    assert response.status_code == 200, response.content
    assert response.json()["model_version"]["version"] == "2"


@pytest.mark.django_db(transaction=True)
def test_create_version_outside_a_transaction_is_three_statements(warm, django_assert_num_queries):
    with django_assert_num_queries(3) as queries:  # no BEGIN, no COMMIT
        response = warm.post("/model-versions/create", {"name": "fraud-detector", "source": S3})
    assert response.status_code == 200, response.content
    assert response.json()["model_version"]["version"] == "2"
    assert "audit_auditevent" in queries.captured_queries[2]["sql"]


def test_set_alias_stays_small(warm, django_assert_max_num_queries):
    create_version(warm)
    body = {"name": "fraud-detector", "alias": "champion", "version": "2"}
    # token, version with the model's stage names, model lock, alias row, update, the audit
    # append, the transaction.
    with django_assert_max_num_queries(8):
        response = warm.post("/registered-models/alias", body)
    assert response.status_code == 200, response.content
