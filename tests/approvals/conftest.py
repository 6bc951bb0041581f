"""Approval personas: an owner, an author (editor who pushes), two approvers, a requester."""

import pytest
from django.utils import timezone

from apps.approvals.access import set_approver
from apps.approvals.models import Stage
from apps.approvals.services import stages_create_defaults
from apps.registry.access import grant_creator_ownership
from apps.registry.models import ModelVersion, RegisteredModel, VersionStatus
from tests.conftest import grant, make_user


@pytest.fixture
def owner(db):
    return make_user("alice")


@pytest.fixture
def author(db):
    return make_user("bob")


@pytest.fixture
def approver1(db):
    return make_user("erin")


@pytest.fixture
def approver2(db):
    return make_user("frank")


@pytest.fixture
def outsider(db):
    return make_user("dave")


@pytest.fixture
def fraud_model(owner, author, approver1, approver2):
    model = RegisteredModel.objects.create(
        name="fraud-detector",
        name_key="fraud-detector",
        created_by=owner,
        metric_directions={"auc": "higher", "latency_ms": "lower"},
        description="# Fraud\n\n## Intended use\n\nScoring.\n",
    )
    grant_creator_ownership(owner, model)
    grant(author, model, "editor")
    for user in (approver1, approver2):
        grant(user, model, "viewer")
    stages_create_defaults(model)
    for stage in model.stages.all():
        set_approver(approver1, stage, True)
        set_approver(approver2, stage, True)
    return model


def make_version(model, author, number: int, status=VersionStatus.READY, **metrics):
    model.last_version_number = number
    model.save(update_fields=["last_version_number"])
    return ModelVersion.objects.create(
        model=model,
        number=number,
        status=status,
        created_by=author,
        metrics=metrics or {"auc": 0.9, "latency_ms": 12},
        verified_at=timezone.now() if status == VersionStatus.READY else None,
    )


@pytest.fixture
def v1(fraud_model, author):
    return make_version(fraud_model, author, 1, auc=0.90, latency_ms=12)


@pytest.fixture
def v2(fraud_model, author):
    return make_version(fraud_model, author, 2, auc=0.93, latency_ms=11)


@pytest.fixture
def production(fraud_model):
    return Stage.objects.get(model=fraud_model, name="production")


@pytest.fixture
def staging(fraud_model):
    return Stage.objects.get(model=fraud_model, name="staging")
