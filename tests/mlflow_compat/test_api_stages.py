"""Aliases over raw HTTP: free aliases move at once; a stage name is a protected alias that
opens a promotion request under the stage's policy; get-latest-versions per stage."""

import re
from typing import Any

import pytest
from mlflow.protos import model_registry_pb2 as proto

from apps.approvals.models import PromotionRequest, PromotionStatus, Stage, StagePolicy
from apps.mlflow_compat.models import ModelAlias
from tests.mlflow_compat.conftest import (
    MlflowHttp,
    assert_error,
    assert_proto_exact,
    create_version,
    mlflow_events,
)

# --- Aliases and protected stages ---------------------------------------------------------------


def set_alias(http: MlflowHttp, alias: str, version: str = "1") -> Any:
    return http.post(
        "/registered-models/alias", {"name": "fraud-detector", "alias": alias, "version": version}
    )


def test_free_aliases_move_at_once_and_are_audited(ml_model, as_editor, editor):
    create_version(as_editor)
    create_version(as_editor)
    assert set_alias(as_editor, "champion").json() == {}
    assert set_alias(as_editor, "champion", "2").json() == {}
    got = as_editor.get("/registered-models/alias", {"name": "fraud-detector", "alias": "champion"})
    assert got.json()["model_version"]["version"] == "2"
    assert_proto_exact(got.json(), proto.GetModelVersionByAlias.Response())
    moves = mlflow_events("alias.set")
    assert [(e.changes["before"], e.changes["after"]) for e in moves] == [
        ({"version": None}, {"version": 1}),
        ({"version": 1}, {"version": 2}),
    ]
    assert all(
        e.model_id == ml_model.pk and e.via == "mlflow" and e.actor_id == editor.pk for e in moves
    )
    assert (
        as_editor.delete(
            "/registered-models/alias", {"name": "fraud-detector", "alias": "champion"}
        ).json()
        == {}
    )
    [deleted] = mlflow_events("alias.deleted")
    assert deleted.model_id == ml_model.pk and deleted.changes["before"] == {"version": 2}
    missing = as_editor.get(
        "/registered-models/alias", {"name": "fraud-detector", "alias": "champion"}
    )
    assert_error(
        missing, 404, "RESOURCE_DOES_NOT_EXIST", "Registered model alias champion not found."
    )


@pytest.mark.parametrize("alias", ["latest", "V2", "has space", "a/b", "x" * 65, ""])
def test_invalid_aliases(ml_model, as_editor, alias):
    create_version(as_editor)
    assert_error(set_alias(as_editor, alias), 400, "INVALID_PARAMETER_VALUE")


def test_an_alias_naming_a_stage_opens_a_promotion_request(ml_model, as_editor, editor):
    create_version(as_editor)
    pattern = (
        r"Stage 'production' is protected: promotion request #(\d+) opened; it needs 2 approvals"
        r" — review at http://testserver/reviews/(\d+)/"
    )
    first = assert_error(set_alias(as_editor, "Production"), 403, "PERMISSION_DENIED", pattern)
    again = assert_error(set_alias(as_editor, "production"), 403, "PERMISSION_DENIED", pattern)
    assert first == again  # the open request is named again, not duplicated
    [promotion] = PromotionRequest.objects.all()
    assert promotion.status == PromotionStatus.PENDING and promotion.requested_by == editor
    assert promotion.stage.name == "production" and promotion.version.number == 1
    assert re.search(r"#(\d+)", first["message"]).group(1) == str(promotion.pk)
    assert mlflow_events("promotion.requested")[0].via == "mlflow"
    assert not ModelAlias.objects.exists()
    deleting = as_editor.delete(
        "/registered-models/alias", {"name": "fraud-detector", "alias": "production"}
    )
    assert_error(deleting, 403, "PERMISSION_DENIED", "Stage 'production' is protected.*")


def test_a_stage_needing_no_approval_moves_at_once(ml_model, as_editor):
    StagePolicy.objects.filter(stage__model=ml_model, stage__name="staging").update(
        required_approvals=0
    )
    create_version(as_editor)
    assert set_alias(as_editor, "staging").json() == {}
    version = as_editor.get(
        "/model-versions/get", {"name": "fraud-detector", "version": "1"}
    ).json()
    assert version["model_version"]["current_stage"] == "Staging"
    assert version["model_version"]["aliases"] == ["staging"]
    by_alias = as_editor.get(
        "/registered-models/alias", {"name": "fraud-detector", "alias": "staging"}
    )
    assert by_alias.json()["model_version"]["version"] == "1"
    model = as_editor.get("/registered-models/get", {"name": "fraud-detector"}).json()
    assert model["registered_model"]["aliases"] == [{"alias": "staging", "version": "1"}]
    assert Stage.objects.get(model=ml_model, name="staging").current_version.number == 1


def test_transition_stage_goes_through_the_policy(ml_model, as_editor):
    create_version(as_editor)
    request = {
        "name": "fraud-detector",
        "version": "1",
        "stage": "Staging",
        "archive_existing_versions": True,
    }
    response = as_editor.post("/model-versions/transition-stage", request)
    assert_error(
        response,
        403,
        "PERMISSION_DENIED",
        r".*promotion request #\d+ opened; it needs 1 approval — .*",
    )
    assert PromotionRequest.objects.get().stage.name == "staging"
    for stage in ("Archived", "None", "Canary"):
        refused = as_editor.post("/model-versions/transition-stage", {**request, "stage": stage})
        assert_error(refused, 400, "INVALID_PARAMETER_VALUE")
    StagePolicy.objects.filter(stage__model=ml_model, stage__name="production").update(
        required_approvals=0
    )
    moved = as_editor.post("/model-versions/transition-stage", {**request, "stage": "production"})
    assert moved.status_code == 200
    assert moved.json()["model_version"]["current_stage"] == "Production"
    assert_proto_exact(moved.json(), proto.TransitionModelVersionStage.Response())


def test_a_failing_gate_is_a_conflict(ml_model, as_editor):
    StagePolicy.objects.filter(stage__model=ml_model).update(requires_verified_files=True)
    create_version(as_editor)
    response = set_alias(as_editor, "production")
    assert_error(response, 409, "RESOURCE_CONFLICT", ".*never verified.*")
    assert not PromotionRequest.objects.exists()


def test_get_latest_versions_per_stage(ml_model, as_editor):
    StagePolicy.objects.filter(stage__model=ml_model, stage__name="staging").update(
        required_approvals=0
    )
    for _ in range(3):
        create_version(as_editor)
    set_alias(as_editor, "staging", "2")

    def latest(**params: Any) -> list[tuple[str, str]]:
        response = as_editor.get(
            "/registered-models/get-latest-versions", {"name": "fraud-detector", **params}
        )
        assert response.status_code == 200, response.content
        return [
            (v["version"], v["current_stage"]) for v in response.json().get("model_versions", [])
        ]

    assert latest() == [("3", "None"), ("2", "Staging")]
    assert latest(stages=["None"]) == [("3", "None")]
    assert latest(stages=["staging", "Production"]) == [("2", "Staging")]
    assert latest(stages=["Archived"]) == []
    posted = as_editor.post(
        "/registered-models/get-latest-versions", {"name": "fraud-detector", "stages": ["Staging"]}
    )
    assert [v["version"] for v in posted.json()["model_versions"]] == ["2"]
    assert_proto_exact(posted.json(), proto.GetLatestVersions.Response())
    bad = as_editor.get(
        "/registered-models/get-latest-versions", {"name": "fraud-detector", "stages": "Canary"}
    )
    assert_error(bad, 400, "INVALID_PARAMETER_VALUE")
