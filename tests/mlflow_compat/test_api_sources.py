"""Model version sources (SECURITY AR-03): local paths, file:, loopback and private hosts
and traversal are refused; remote locations are kept as metadata the server never opens."""

import builtins
from typing import Any
from urllib.parse import urlsplit

import pytest

from apps.registry.models import ModelVersion
from tests.mlflow_compat.conftest import (
    assert_error,
    create_raw,
    create_version,
)

# --- Sources (SECURITY AR-03) -------------------------------------------------------------------

REFUSED_SOURCES = [
    "file:///etc/",
    "file://./etc",
    "file:",
    "//proc/self/root",
    "/etc",
    "/etc/passwd",
    "../../../etc",
    "relative/model",
    "C:/models/x",
    "C:\\models\\x",
    "http:///?/../../etc/",
    "http:///#/../../etc/",
    "http://127.0.0.1/x",
    "https://127.0.0.1/x",
    "https://localhost/x",
    "https://[::1]/x",
    "https://[::ffff:127.0.0.1]/x",
    "https://2130706433/x",
    "https://0x7f000001/x",
    "https://0177.0.0.1/x",
    "https://127.1/x",
    "https://10.0.0.1/x",
    "https://169.254.169.254/latest/meta-data/",
    "https://[64:ff9b::a9fe:a9fe]/x",
    "https://a@example.com/x",
    "mlflow-artifacts:/../..",
    "mlflow-artifacts:/models/%2e%2e/%2e%2e/etc",
    "s3://bucket/a/../../b",
    "dbfs:/",
    "gopher://example.com/x",
    "ftp://example.com/x",
    "models:/m/1/../../x",
    "runs:/../x",
    "",
]
ACCEPTED_SOURCES = [
    "s3://bucket/run/model",
    "gs://bucket/model",
    "wasbs://models@acct.blob.core.windows.net/fraud",
    "hdfs://namenode:8020/models/fraud",
    "hdfs:///models/fraud",
    "dbfs:/databricks/mlflow/models/fraud",
    "runs:/0a1b2c3d/model",
    "models:/fraud-detector/1",
    "mlflow-artifacts:/1/0a1b2c/artifacts/model",
    "https://models.example.com/fraud/1.tar.gz",
]


@pytest.fixture
def opened_paths(monkeypatch):
    """Every path the process opens with `open` during the test."""
    paths: list[str] = []
    real_open = builtins.open

    def recording_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        paths.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    return paths


@pytest.mark.parametrize("source", REFUSED_SOURCES)
def test_dangerous_sources_are_refused_and_never_opened(ml_model, as_editor, source, opened_paths):
    response = create_raw(as_editor, source=source)
    assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert not ModelVersion.objects.exists()
    assert not [path for path in opened_paths if path.startswith(("/etc", "/proc"))]


@pytest.mark.parametrize("source", ACCEPTED_SOURCES)
def test_remote_sources_are_kept_as_metadata(ml_model, as_editor, source, opened_paths):
    body = create_version(as_editor, source=source)
    assert body["source"] == source and body["status"] == "READY"
    location = urlsplit(source).path.strip("/")  # what a careless server would open
    assert not [path for path in opened_paths if location in path or source in path]
    get = as_editor.get(
        "/model-versions/get-download-uri", {"name": "fraud-detector", "version": "1"}
    )
    assert get.json() == {"artifact_uri": source}


def test_a_source_inside_regents_own_bucket_is_refused(ml_model, as_editor, settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": "regent-store"},
        },
    }
    assert_error(
        create_raw(as_editor, source="s3://regent-store/1/2/abc"), 400, "INVALID_PARAMETER_VALUE"
    )


def test_archived_models_accept_no_versions(ml_model, as_owner):
    as_owner.delete("/registered-models/delete", {"name": "fraud-detector"})
    assert_error(create_raw(as_owner), 404, "RESOURCE_DOES_NOT_EXIST")
