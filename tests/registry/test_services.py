"""Catalog services: validation before any write, gapless numbering, audit rows."""

import math

import pytest

from apps.audit.models import AuditEvent
from apps.registry import access
from apps.registry.models import ModelVersion, RegisteredModel, VersionParent, VersionStatus
from apps.registry.services import (
    model_archive,
    model_create,
    model_unarchive,
    model_update,
    version_create,
    version_update,
)
from registry_site.api_errors import ApiError, Conflict
from tests.conftest import make_user, run_concurrently
from tests.registry.conftest import fullwidth

pytestmark = pytest.mark.django_db


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def assert_invalid(error: pytest.ExceptionInfo, field: str) -> None:
    assert error.value.status == 400
    assert error.value.code == "invalid"
    assert error.value.details == {"field": field}


# --- models ----------------------------------------------------------------------------------


def test_model_create_makes_creator_owner_and_audits(owner):
    model = model_create(actor=owner, name="churn", description="card", tags={"team": "growth"})
    assert (model.name, model.name_key, model.created_by) == ("churn", "churn", owner)
    assert access.model_permissions(owner, model) == {"view", "edit", "manage"}
    [event] = events("model.created")
    assert event.actor == owner
    assert event.model_id == model.pk
    assert event.changes == {
        "after": {
            "name": "churn",
            "description": "card",
            "tags": {"team": "growth"},
            "visibility": "private",
        }
    }


def test_model_name_is_stored_in_nfkc_form(owner):
    model = model_create(actor=owner, name=fullwidth("resnet50"))
    assert (model.name, model.name_key) == ("resnet50", "resnet50")


@pytest.mark.parametrize(
    "name",
    ["../x", "a b", "a" * 129, "-leading", "", ".hidden", "a/b", "a\x00b", "ü-model", None, 7],
)
def test_invalid_model_names_write_nothing(owner, name):
    with pytest.raises(ApiError) as error:
        model_create(actor=owner, name=name)
    assert_invalid(error, "name")
    assert not RegisteredModel.objects.exists()
    assert not AuditEvent.objects.filter(action="model.created").exists()


@pytest.mark.parametrize(
    "name", ["Fraud-Detector", "FRAUD-DETECTOR", fullwidth("fraud") + "-detector"]
)
def test_look_alike_and_case_duplicates_conflict(owner, ml_model, name):
    with pytest.raises(Conflict) as error:
        model_create(actor=owner, name=name)
    assert (error.value.status, error.value.code) == (409, "already_exists")
    assert error.value.details == {"field": "name"}
    assert RegisteredModel.objects.count() == 1
    assert len(events("model.created")) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"description": "x" * 100_001}, "description"),
        ({"description": "nul\x00byte"}, "description"),
        ({"description": 5}, "description"),
        ({"tags": {f"k{i}": "v" for i in range(101)}}, "tags"),
        ({"tags": {"k" * 65: "v"}}, "tags"),
        ({"tags": {"": "v"}}, "tags"),
        ({"tags": {"team": "v" * 257}}, "tags.team"),
        ({"tags": {"team": 3}}, "tags.team"),
        ({"tags": ["team"]}, "tags"),
        ({"visibility": "public"}, "visibility"),
    ],
)
def test_model_create_rejects_bad_fields(owner, kwargs, field):
    with pytest.raises(ApiError) as error:
        model_create(actor=owner, name="ok-name", **kwargs)
    assert_invalid(error, field)
    assert not RegisteredModel.objects.exists()


def test_limits_are_inclusive(owner):
    tags = {f"{i:0>64}": "v" * 256 for i in range(100)}
    model = model_create(actor=owner, name="a" * 128, description="d" * 100_000, tags=tags)
    assert len(model.tags) == 100


def test_model_update_audits_only_changed_fields(owner, ml_model):
    model_update(actor=owner, model=ml_model, description="new card", tags={"team": "risk"})
    [event] = events("model.updated")
    assert event.changes == {
        "before": {"description": "# Fraud detector\nFlags card transactions."},
        "after": {"description": "new card"},
    }
    ml_model.refresh_from_db()
    assert ml_model.description == "new card"


def test_model_update_without_change_records_nothing(owner, ml_model):
    model_update(actor=owner, model=ml_model, tags={"team": "risk"}, visibility="private")
    model_update(actor=owner, model=ml_model)
    assert events("model.updated") == []


def test_model_update_replaces_tags_and_metric_directions(owner, ml_model):
    model_update(actor=owner, model=ml_model, tags={}, metric_directions={"loss": "lower"})
    ml_model.refresh_from_db()
    assert ml_model.tags == {}
    assert ml_model.metric_directions == {"loss": "lower"}


def test_model_update_validates_before_writing(owner, ml_model):
    with pytest.raises(ApiError) as error:
        model_update(
            actor=owner, model=ml_model, description="fine", metric_directions={"auc": "up"}
        )
    assert_invalid(error, "metric_directions.auc")
    ml_model.refresh_from_db()
    assert ml_model.description.startswith("# Fraud detector")
    assert events("model.updated") == []


def test_archive_is_audited_idempotent_and_refuses_versions(owner, ml_model):
    model_archive(actor=owner, model=ml_model)
    model_archive(actor=owner, model=ml_model)
    assert len(events("model.archived")) == 1
    with pytest.raises(Conflict) as error:
        version_create(actor=owner, model=ml_model)
    assert error.value.status == 409
    ml_model.refresh_from_db()
    assert ml_model.last_version_number == 0
    assert not ModelVersion.objects.exists()
    model_unarchive(actor=owner, model=ml_model)
    assert version_create(actor=owner, model=ml_model).number == 1
    assert [e.changes["after"] for e in events("model.unarchived")] == [{"archived": False}]


# --- versions --------------------------------------------------------------------------------


def test_versions_are_numbered_and_audited(owner, ml_model):
    first = version_create(actor=owner, model=ml_model, metrics={"auc": 0.9, "n": 3})
    second = version_create(actor=owner, model=ml_model)
    assert (first.number, second.number) == (1, 2)
    assert first.status == VersionStatus.PENDING
    assert first.created_by == owner
    ml_model.refresh_from_db()
    assert ml_model.last_version_number == 2
    created = events("version.created")
    assert [e.target_label for e in created] == ["fraud-detector/1", "fraud-detector/2"]
    assert created[0].changes["after"]["metrics"] == {"auc": 0.9, "n": 3}
    assert created[0].changes["after"]["status"] == "pending"


def test_version_metadata_is_normalised(owner, ml_model):
    version = version_create(
        actor=owner,
        model=ml_model,
        training_data=[{"uri": "file:///etc/passwd"}, {"uri": "s3://d", "sha256": "b" * 64}],
        source={"uri": "mlflow-artifacts:/../..", "run_id": None},
        dependencies={"python": "3.11", "requirements": ["torch"]},
        params={"lr": 0.1, "name": "x", "flag": True, "none": None},
    )
    version.refresh_from_db()
    # URIs are inert metadata: stored as given, never opened (SECURITY AR-03).
    assert version.training_data == [
        {"uri": "file:///etc/passwd", "sha256": None, "description": ""},
        {"uri": "s3://d", "sha256": "b" * 64, "description": ""},
    ]
    assert version.source == {"uri": "mlflow-artifacts:/../.."}
    assert version.params == {"lr": 0.1, "name": "x", "flag": True, "none": None}


BAD_VERSION_FIELDS = [
    ({"metrics": {"auc": math.nan}}, "metrics.auc"),
    ({"metrics": {"auc": math.inf}}, "metrics.auc"),
    ({"metrics": {"auc": -math.inf}}, "metrics.auc"),
    ({"metrics": {"auc": True}}, "metrics.auc"),
    ({"metrics": {"auc": "0.9"}}, "metrics.auc"),
    ({"metrics": {"auc": None}}, "metrics.auc"),
    ({"metrics": {"auc": 10**400}}, "metrics.auc"),
    ({"metrics": {f"m{i}": 1 for i in range(501)}}, "metrics"),
    ({"metrics": [1, 2]}, "metrics"),
    ({"params": {"lr": math.nan}}, "params.lr"),
    ({"params": {"layers": [1, 2]}}, "params.layers"),
    ({"params": {"opt": {"name": "adam"}}}, "params.opt"),
    ({"params": {f"p{i}": 1 for i in range(501)}}, "params"),
    ({"tags": {"k": "v" * 257}}, "tags.k"),
    ({"description": "x" * 100_001}, "description"),
    ({"training_data": [{"uri": "s3://d"}] * 101}, "training_data"),
    ({"training_data": [{"uri": "s3://d", "sha256": "A" * 64}]}, "training_data.0.sha256"),
    ({"training_data": [{"uri": "s3://d", "sha256": "a" * 63}]}, "training_data.0.sha256"),
    (
        {"training_data": [{"uri": "s3://d", "sha256": "sha256:" + "a" * 64}]},
        "training_data.0.sha256",
    ),
    ({"training_data": [{"uri": ""}]}, "training_data.0.uri"),
    ({"training_data": [{"uri": "s3://d\nx"}]}, "training_data.0.uri"),
    ({"training_data": [{"sha256": "a" * 64}]}, "training_data.0.uri"),
    ({"training_data": [{"uri": "s3://d", "opened": True}]}, "training_data.0"),
    ({"training_data": ["s3://d"]}, "training_data.0"),
    ({"dependencies": {"torch": 2}}, "dependencies.torch"),
    ({"dependencies": {"reqs": ["a", 3]}}, "dependencies.reqs.1"),
    ({"source": {"path": "/etc"}}, "source"),
    ({"source": {"commit": ""}}, "source.commit"),
    ({"parents": ["no-slash"]}, "parents.0"),
    ({"parents": ["../etc/1"]}, "parents.0"),
    ({"parents": ["fraud-detector/x"]}, "parents.0"),
    ({"parents": ["fraud-detector/01"]}, "parents.0"),
    ({"parents": ["fraud-detector/0"]}, "parents.0"),
    ({"parents": ["fraud-detector/-1"]}, "parents.0"),
    ({"parents": ["fraud-detector/9999999999999999999999"]}, "parents.0"),
    ({"parents": ["fraud-detector/4294967296"]}, "parents.0"),
    ({"parents": [f"m/{i}" for i in range(1, 22)]}, "parents"),
    ({"parents": "fraud-detector/1"}, "parents"),
]


@pytest.mark.parametrize(("kwargs", "field"), BAD_VERSION_FIELDS)
def test_version_create_rejects_bad_metadata_and_writes_nothing(owner, ml_model, kwargs, field):
    with pytest.raises(ApiError) as error:
        version_create(actor=owner, model=ml_model, **kwargs)
    assert_invalid(error, field)
    assert not ModelVersion.objects.exists()
    assert RegisteredModel.objects.get().last_version_number == 0
    assert events("version.created") == []


def test_parents_are_linked_across_models(owner, ml_model):
    base = version_create(actor=owner, model=ml_model)
    other = model_create(actor=owner, name="distilled")
    child = version_create(actor=owner, model=other, parents=["Fraud-Detector/1"])
    assert list(child.parents.all()) == [base]
    assert events("version.created")[-1].changes["after"]["parents"] == ["fraud-detector/1"]


def test_missing_and_invisible_parents_get_the_same_message(owner, outsider, ml_model):
    version_create(actor=owner, model=ml_model)  # fraud-detector/1, private to alice
    mine = model_create(actor=outsider, name="daves-model")
    messages = []
    for parent in ["fraud-detector/1", "fraud-detector/2", "nothing-here/1"]:
        with pytest.raises(ApiError) as error:
            version_create(actor=outsider, model=mine, parents=[parent])
        assert_invalid(error, "parents.0")
        messages.append(error.value.message.replace(parent, "X"))
    assert messages == ["parent X does not exist"] * 3
    assert not VersionParent.objects.exists()
    assert RegisteredModel.objects.get(pk=mine.pk).last_version_number == 0


def test_duplicate_parents_are_refused(owner, ml_model):
    version_create(actor=owner, model=ml_model)
    with pytest.raises(ApiError) as error:
        version_create(
            actor=owner, model=ml_model, parents=["fraud-detector/1", "FRAUD-detector/1"]
        )
    assert_invalid(error, "parents.1")


def test_version_update_audits_before_and_after(owner, version):
    ModelVersion.objects.filter(pk=version.pk).update(status=VersionStatus.READY)
    version_update(actor=owner, version=version, description="Second look", tags=version.tags)
    [event] = events("version.updated")
    assert event.changes == {
        "before": {"description": "First cut"},
        "after": {"description": "Second look"},
    }
    assert event.model_id == version.model_id
    version.refresh_from_db()
    assert (version.description, version.status) == ("Second look", VersionStatus.READY)


def test_version_update_without_change_records_nothing(owner, version):
    version_update(actor=owner, version=version, description="First cut")
    version_update(actor=owner, version=version)
    assert events("version.updated") == []


def test_version_update_validates_tags(owner, version):
    with pytest.raises(ApiError) as error:
        version_update(actor=owner, version=version, description="ok", tags={"k": 1})
    assert_invalid(error, "tags.k")
    version.refresh_from_db()
    assert version.description == "First cut"


# --- concurrency (real transactions on PostgreSQL) --------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_version_creation_is_gapless(owner):
    model = model_create(actor=owner, name="busy")
    results = run_concurrently(20, lambda _: version_create(actor=owner, model=model).number)
    assert sorted(results) == list(range(1, 21))
    numbers = ModelVersion.objects.filter(model=model).values_list("number", flat=True)
    assert sorted(numbers) == list(range(1, 21))
    assert RegisteredModel.objects.get(pk=model.pk).last_version_number == 20
    assert AuditEvent.objects.filter(action="version.created").count() == 20


@pytest.mark.django_db(transaction=True)
def test_concurrent_same_name_creation_has_one_winner(owner):
    users = [owner, *(make_user(f"racer{index}") for index in range(5))]
    names = ["race", "RACE", "Race", fullwidth("race"), "race", "rAcE"]
    results = run_concurrently(6, lambda i: model_create(actor=users[i], name=names[i]))
    winners = [result for result in results if isinstance(result, RegisteredModel)]
    losers = [result for result in results if isinstance(result, Conflict)]
    assert (len(winners), len(losers)) == (1, 5)
    assert {loser.code for loser in losers} == {"already_exists"}
    assert RegisteredModel.objects.filter(name_key="race").count() == 1
    assert AuditEvent.objects.filter(action="model.created").count() == 1
