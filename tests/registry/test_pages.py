"""Registry pages: model list, model page, forms, version page, uploads, seal and download."""

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from apps.accounts.models import User
from apps.registry import artifacts
from apps.registry.models import Artifact, ModelVersion, RegisteredModel, VersionStatus
from apps.registry.services import model_create, version_create
from tests.conftest import make_user
from tests.registry.conftest import grant

pytestmark = pytest.mark.django_db

MODEL_LIST = reverse("registry:model-list")
MODEL_CREATE = reverse("registry:model-create")
LOGIN = reverse("accounts:login")
WEIGHTS = b"\x00safetensors-ish bytes \x01\x02" * 100
PICKLE = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."


def model_url(name: str, page: str = "model-detail") -> str:
    return reverse(f"registry:{page}", args=[name])


def version_url(version: ModelVersion, page: str = "version-detail") -> str:
    return reverse(f"registry:{page}", args=[version.model.name, version.number])


def html(response) -> str:
    return response.content.decode()


def upload(client, version: ModelVersion, name: str = "model.bin", data: bytes = WEIGHTS, **extra):
    file = SimpleUploadedFile(name, data, content_type="application/octet-stream")
    return client.post(version_url(version, "version-upload"), {"files": file, **extra})


def page_urls(version: ModelVersion) -> list[str]:
    name = version.model.name
    return [
        MODEL_LIST,
        model_url(name),
        model_url(name) + "?tab=versions",
        version_url(version),
        version_url(version, "version-status"),
    ]


def denied_urls(version: ModelVersion) -> list[str]:
    """Every URL of a model, GET and POST ones alike."""
    name = version.model.name
    return [
        model_url(name),
        model_url(name, "model-edit"),
        model_url(name, "version-create"),
        version_url(version),
        version_url(version, "version-status"),
        version_url(version, "version-edit"),
        version_url(version, "version-upload"),
        version_url(version, "version-seal"),
        reverse("registry:file-download", args=[name, version.number, "model.bin"]),
    ]


# --- Who may see what -----------------------------------------------------------------------


def test_viewer_sees_every_page(client, viewer, version):
    client.force_login(viewer)
    for url in page_urls(version):
        assert client.get(url).status_code == 200, url


@pytest.mark.parametrize("method", ["get", "post"])
def test_outsider_gets_404_everywhere(client, outsider, version, method):
    client.force_login(outsider)
    for url in denied_urls(version):
        assert getattr(client, method)(url).status_code in (404, 405), url
    response = client.get(model_url(version.model.name))
    assert response.status_code == 404
    assert version.model.name not in html(response)


def test_missing_model_and_version_are_404(client, viewer, version):
    client.force_login(viewer)
    assert client.get(model_url("no-such-model")).status_code == 404
    missing = reverse("registry:version-detail", args=[version.model.name, 99])
    assert client.get(missing).status_code == 404


def test_anonymous_is_sent_to_sign_in(client, version):
    for url in [*page_urls(version), MODEL_CREATE, model_url(version.model.name, "model-edit")]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.url.startswith(LOGIN), url


def test_viewer_gets_403_on_forms_and_actions(client, viewer, version):
    client.force_login(viewer)
    name = version.model.name
    for url in (model_url(name, "model-edit"), model_url(name, "version-create")):
        assert client.get(url).status_code == 403, url
        assert client.post(url, {"description": "x"}).status_code == 403, url
    assert upload(client, version).status_code == 403
    assert client.post(version_url(version, "version-seal")).status_code == 403
    assert (
        client.post(version_url(version, "version-edit"), {"description": "x"}).status_code == 403
    )
    version.refresh_from_db()
    assert (version.description, version.status) == ("First cut", VersionStatus.PENDING)
    assert not Artifact.objects.exists()


def test_viewer_sees_no_edit_buttons(client, viewer, version):
    client.force_login(viewer)
    page = html(client.get(model_url(version.model.name)))
    assert model_url(version.model.name, "version-create") not in page
    assert model_url(version.model.name, "model-edit") not in page
    page = html(client.get(version_url(version)))
    assert version_url(version, "version-edit") not in page
    assert version_url(version, "version-upload") not in page


def test_pages_have_no_inline_script_or_style(client, editor, version):
    """CSP is script-src 'self' and style-src 'self': nothing inline may be needed."""
    client.force_login(editor)
    urls = [
        *page_urls(version)[:-1],
        MODEL_CREATE,
        model_url(version.model.name, "model-edit"),
        model_url(version.model.name, "version-create"),
    ]
    for url in urls:
        page = html(client.get(url))
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), url
        assert " style=" not in page, url


def test_new_version_form_works_without_javascript(client, editor, ml_model):
    client.force_login(editor)
    page = html(client.get(model_url(ml_model.name, "version-create")))
    # The file pickers are shown (and used) by upload.js only; without it the form posts
    # metadata and the version page takes the files.
    assert re.search(r'<section class="card upload-card"[^>]*data-js-only hidden>', page)
    assert 'type="file" id="pick-files" multiple' in page
    assert "webkitdirectory" in page
    assert '<script src="/static/js/upload.js" defer></script>' in page
    for field in ("description", "metrics", "params", "tags", "parents", "training_data"):
        assert f'<label for="id_{field}">' in page, field


# --- Model list -----------------------------------------------------------------------------


def test_list_shows_only_visible_models(client, outsider, ml_model, owner):
    model_create(actor=owner, name="shared-embeddings", visibility="internal")
    client.force_login(outsider)
    page = html(client.get(MODEL_LIST))
    assert "shared-embeddings" in page
    assert ml_model.name not in page


def test_list_row_shows_tags_and_latest_version(client, viewer, version):
    client.force_login(viewer)
    page = html(client.get(MODEL_LIST))
    assert "team: risk" in page
    assert version_url(version) in page
    assert ">pending<" in page
    assert "Flags card transactions." in page


def test_list_search_by_text_and_tag(client, owner, ml_model):
    model_create(actor=owner, name="churn", description="Predicts churn", tags={"team": "growth"})
    client.force_login(owner)
    assert "churn" not in html(client.get(MODEL_LIST, {"q": "fraud"}))
    page = html(client.get(MODEL_LIST, {"q": "team:growth"}))
    assert 'href="/models/churn/"' in page
    assert 'href="/models/fraud-detector/"' not in page
    page = html(client.get(MODEL_LIST, {"q": "nothing-like-this"}))
    assert "No models match this search" in page


def test_list_filters_visibility_and_archived(client, owner, ml_model):
    internal = model_create(actor=owner, name="open-model", visibility="internal")
    internal.archived_at = internal.created_at
    internal.save()
    client.force_login(owner)
    assert "open-model" not in html(client.get(MODEL_LIST))
    page = html(client.get(MODEL_LIST, {"archived": "on", "visibility": "internal"}))
    assert 'href="/models/open-model/"' in page
    assert 'href="/models/fraud-detector/"' not in page


def test_empty_list_offers_to_register(client, outsider):
    client.force_login(outsider)
    page = html(client.get(MODEL_LIST))
    assert "No models yet" in page
    assert f'href="{MODEL_CREATE}"' in page


def test_list_paginates_by_25(client, owner):
    for index in range(27):
        model_create(actor=owner, name=f"m-{index:02d}")
    client.force_login(owner)
    first, second = html(client.get(MODEL_LIST)), html(client.get(MODEL_LIST, {"page": 2}))
    assert "Models 1\u201325 of 27" in first
    assert "m-00" in first and "m-26" not in first
    assert "m-26" in second


def _list_queries(client, django_assert_max_num_queries, owner, count: int) -> None:
    RegisteredModel.objects.all().delete()
    for index in range(count):
        model = model_create(actor=owner, name=f"bulk-{index}", tags={"i": str(index)})
        version_create(actor=owner, model=model, metrics={"acc": 0.5})
    client.force_login(owner)
    client.get(MODEL_LIST)  # warm the session and content-type caches
    with django_assert_max_num_queries(LIST_QUERY_BUDGET) as captured:
        assert client.get(MODEL_LIST).status_code == 200
    return len(captured)


LIST_QUERY_BUDGET = 6


def test_list_queries_do_not_grow_with_models(client, owner, django_assert_max_num_queries):
    few = _list_queries(client, django_assert_max_num_queries, owner, 3)
    many = _list_queries(client, django_assert_max_num_queries, owner, 40)
    assert few == many


# --- Model create and edit ------------------------------------------------------------------


def test_create_model_through_the_form(client, alice):
    client.force_login(alice)
    response = client.post(
        MODEL_CREATE,
        {
            "name": "sentiment",
            "description": "# Sentiment\nReads reviews.",
            "tags": "task=nlp\nteam = growth",
            "visibility": "internal",
        },
    )
    model = RegisteredModel.objects.get(name="sentiment")
    assert response.status_code == 302
    assert response.url == model_url("sentiment")
    assert model.tags == {"task": "nlp", "team": "growth"}
    assert model.visibility == "internal"
    assert "Reads reviews." in html(client.get(response.url))


def test_create_model_flash_message(client, alice):
    client.force_login(alice)
    response = client.post(MODEL_CREATE, {"name": "flashy", "visibility": "private"}, follow=True)
    assert "Model “flashy” registered" in html(response)


@pytest.mark.parametrize("name", ["../evil", "-starts-with-dash", "spaces not allowed"])
def test_invalid_name_shows_a_field_error_and_creates_nothing(client, alice, name):
    client.force_login(alice)
    response = client.post(MODEL_CREATE, {"name": name, "visibility": "private"})
    assert response.status_code == 400
    field = re.search(r'<div class="field field-invalid">\s*<label for="id_name"', html(response))
    assert field, "the error sits in the name field"
    assert 'aria-invalid="true"' in html(response)
    assert not RegisteredModel.objects.exists()


def test_duplicate_name_is_a_name_error(client, alice, ml_model):
    client.force_login(alice)
    response = client.post(MODEL_CREATE, {"name": "FRAUD-detector", "visibility": "private"})
    assert response.status_code == 400
    assert "already exists" in html(response)
    assert RegisteredModel.objects.count() == 1


def test_bad_tag_line_is_a_tags_error(client, alice):
    client.force_login(alice)
    response = client.post(
        MODEL_CREATE, {"name": "x1", "tags": "no equals sign", "visibility": "private"}
    )
    assert response.status_code == 400
    assert "expected “key=value”" in html(response)
    assert not RegisteredModel.objects.exists()


def test_owner_edits_card_tags_and_visibility(client, owner, ml_model):
    client.force_login(owner)
    url = model_url(ml_model.name, "model-edit")
    assert 'name="visibility"' in html(client.get(url))
    response = client.post(
        url, {"description": "New card", "tags": "team=ml", "visibility": "internal"}
    )
    assert response.status_code == 302
    ml_model.refresh_from_db()
    assert (ml_model.description, ml_model.tags, ml_model.visibility) == (
        "New card",
        {"team": "ml"},
        "internal",
    )


def test_editor_cannot_change_visibility(client, editor, ml_model):
    client.force_login(editor)
    url = model_url(ml_model.name, "model-edit")
    assert 'name="visibility"' not in html(client.get(url))
    client.post(url, {"description": "Edited", "tags": "", "visibility": "internal"})
    ml_model.refresh_from_db()
    assert (ml_model.description, ml_model.visibility) == ("Edited", "private")


# --- Model page -----------------------------------------------------------------------------


def test_model_page_renders_the_card_sanitised(client, owner, ml_model):
    ml_model.description = (
        "# Card\n\n<script>alert('x')</script>\n\n[click](javascript:alert(1)) **bold**"
    )
    ml_model.save()
    client.force_login(owner)
    page = html(client.get(model_url(ml_model.name)))
    assert "<strong>bold</strong>" in page
    assert "alert(" not in page
    assert "javascript:" not in page
    assert "<script>" not in page.split("</head>")[1]


def test_model_page_versions_tab(client, editor, version):
    version_create(actor=editor, model=version.model, metrics={"auc": 0.95, "f1": 0.8})
    client.force_login(editor)
    page = html(client.get(model_url(version.model.name), {"tab": "versions"}))
    assert 'aria-current="page">Versions' in page
    assert '<th scope="col" class="num">auc</th>' in page
    assert '<th scope="col" class="num">f1</th>' in page
    assert ">0.95<" in page and ">0.91<" in page
    assert "bob" in page
    assert model_url(version.model.name, "version-create") in page


def _detail_queries(client, django_assert_max_num_queries, editor, model, count: int) -> int:
    model.versions.all().delete()
    for index in range(count):
        version_create(actor=editor, model=model, metrics={"auc": index / 100, "loss": 1})
    client.force_login(editor)
    url = model_url(model.name)
    client.get(url)
    sizes = []
    for params in ({}, {"tab": "versions"}):
        with django_assert_max_num_queries(DETAIL_QUERY_BUDGET) as captured:
            assert client.get(url, params).status_code == 200
        sizes.append(len(captured))
    return sizes


DETAIL_QUERY_BUDGET = 12


def test_model_page_queries_do_not_grow_with_versions(
    client, editor, ml_model, django_assert_max_num_queries
):
    few = _detail_queries(client, django_assert_max_num_queries, editor, ml_model, 5)
    many = _detail_queries(client, django_assert_max_num_queries, editor, ml_model, 60)
    assert few == many


# --- Versions -------------------------------------------------------------------------------


def version_form(**overrides: str) -> dict[str, str]:
    return {
        "description": "Retrained on March data",
        "metrics": "auc=0.93\nloss = 0.18\nepochs=12",
        "params": "lr=0.001\noptimizer=adam\nearly_stop=true",
        "tags": "candidate=yes",
        "parents": "",
        "training_data": "s3://data/fraud/2024-03.parquet " + "b" * 64 + "\ns3://data/extra.csv",
        "source_uri": "https://git.example.com/fraud",
        "run_id": "run-77",
        "commit": "deadbeef",
        **overrides,
    }


def test_create_version_through_the_form(client, editor, version):
    client.force_login(editor)
    response = client.post(
        model_url(version.model.name, "version-create"),
        version_form(parents=f"{version.model.name}/1"),
    )
    created = ModelVersion.objects.get(model=version.model, number=2)
    assert response.status_code == 302
    assert response.url == version_url(created)
    assert created.status == VersionStatus.PENDING
    assert created.metrics == {"auc": 0.93, "loss": 0.18, "epochs": 12}
    assert created.params == {"lr": 0.001, "optimizer": "adam", "early_stop": True}
    assert created.training_data[0]["sha256"] == "b" * 64
    assert created.source == {
        "uri": "https://git.example.com/fraud",
        "run_id": "run-77",
        "commit": "deadbeef",
    }
    assert list(created.parents.all()) == [version]
    assert created.created_by == editor


def test_create_version_for_upload_js_answers_json(client, editor, ml_model):
    client.force_login(editor)
    response = client.post(
        model_url(ml_model.name, "version-create"),
        version_form(),
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 201
    assert response.json() == {
        "version": 1,
        "url": "/models/fraud-detector/versions/1/",
        "files_url": "/api/v1/models/fraud-detector/versions/1/files/",
        "seal_url": "/api/v1/models/fraud-detector/versions/1/seal",
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("metrics", "auc=high", "must be a number"),
        ("parents", "fraud-detector/7", "does not exist"),
        ("parents", "not a ref", "expected “model-name/version”"),
        ("training_data", "s3://x " + "z" * 64, "64 lowercase hexadecimal"),
    ],
)
def test_invalid_version_shows_the_field_error(client, editor, ml_model, field, value, message):
    client.force_login(editor)
    response = client.post(
        model_url(ml_model.name, "version-create"), version_form(**{field: value})
    )
    assert response.status_code == 400
    page = html(response)
    error_at = page.index(message)
    assert page.rindex(f'for="id_{field}"', 0, error_at) > page.rindex('class="field', 0, error_at)
    assert not ModelVersion.objects.exists()


def test_version_page_shows_metadata_and_lineage(client, editor, version):
    child = version_create(actor=editor, model=version.model, parents=[str(version)])
    client.force_login(editor)
    page = html(client.get(version_url(version)))
    assert "First cut" in page
    assert "s3://datasets/fraud/2024.parquet" in page
    assert "run-42" in page
    assert "optimizer" in page and "adam" in page
    assert "numpy&gt;=1.26" in page
    assert '<th scope="row">auc</th><td class="num">0.91</td>' in page
    assert f'href="{version_url(child)}"' in page
    assert f'href="{version_url(version)}"' in html(client.get(version_url(child)))


def test_hidden_parent_is_not_named(client, owner, editor, version):
    secret = model_create(actor=owner, name="secret-base")
    base = version_create(actor=owner, model=secret)
    child = version_create(actor=owner, model=version.model, parents=[str(base)])
    client.force_login(editor)
    page = html(client.get(version_url(child)))
    assert "secret-base" not in page


def test_editor_edits_version_description_and_tags(client, editor, version):
    client.force_login(editor)
    response = client.post(
        version_url(version, "version-edit"), {"description": "Better words", "tags": "k=v"}
    )
    assert response.status_code == 302
    version.refresh_from_db()
    assert (version.description, version.tags) == ("Better words", {"k": "v"})
    response = client.post(version_url(version, "version-edit"), {"tags": "broken"})
    assert response.status_code == 400
    assert "expected “key=value”" in html(response)


def test_status_endpoint(client, viewer, version):
    client.force_login(viewer)
    response = client.get(version_url(version, "version-status"))
    assert response.json() == {
        "status": "pending",
        "status_reason": "",
        "bytes_verified": 0,
        "bytes_total": 0,
    }
    assert "no-store" in response["Cache-Control"]


# --- Files: the no-JavaScript path ----------------------------------------------------------


def test_upload_seal_verify_without_javascript(client, editor, version):
    client.force_login(editor)
    page = html(client.get(version_url(version)))
    assert 'enctype="multipart/form-data"' in page
    assert version_url(version, "version-seal") in page

    response = upload(client, version, "weights.safetensors")
    assert response.status_code == 302
    response = upload(client, version, "config.json", b"{}", path="configs/config.json")
    assert response.status_code == 302
    assert sorted(version.files.values_list("path", flat=True)) == [
        "configs/config.json",
        "weights.safetensors",
    ]

    response = client.post(version_url(version, "version-seal"))
    assert response.status_code == 302
    version.refresh_from_db()
    assert version.status == VersionStatus.VERIFYING
    page = html(client.get(version_url(version)))
    assert f"verifying — 0.0 of {(len(WEIGHTS) + 2) / 1000:.1f} kB" in page
    assert "data-status-url" in page
    assert version_url(version, "version-upload") not in page

    artifacts.version_verify(version_id=version.pk)
    page = html(client.get(version_url(version)))
    assert ">ready<" in page
    digest = version.files.get(path="weights.safetensors").sha256
    assert f'<code class="sha sha-full">{digest}</code>' in page


def test_upload_refused_after_seal_shows_error(client, editor, version):
    client.force_login(editor)
    upload(client, version)
    client.post(version_url(version, "version-seal"))
    response = upload(client, version, "late.bin")
    assert response.status_code == 400
    assert "sealed" in html(response)
    assert version.files.count() == 1


def test_upload_bad_path_shows_error(client, editor, version):
    client.force_login(editor)
    response = upload(client, version, path="../escape.bin")
    assert response.status_code == 400
    assert "Invalid file path" in html(response)
    assert not version.files.exists()


def test_seal_without_files_is_refused(client, editor, version):
    client.force_login(editor)
    response = client.post(version_url(version, "version-seal"), follow=True)
    assert "empty version cannot be sealed" in html(response)
    version.refresh_from_db()
    assert version.status == VersionStatus.PENDING


def test_pickle_warning_and_how_to_load(client, editor, version):
    client.force_login(editor)
    response = upload(client, version, "model.pkl", PICKLE)
    assert response.status_code == 302, html(response)[-3000:]
    page = html(client.get(version_url(version)))
    assert "unsafe to load from untrusted sources" in page
    assert "How to load" in page
    assert "pickle.load" in page


def test_download_from_the_page_link(client, viewer, editor, version):
    client.force_login(editor)
    upload(client, version, path="weights/model.bin")
    client.post(version_url(version, "version-seal"))
    artifacts.version_verify(version_id=version.pk)
    client.force_login(viewer)
    page = html(client.get(version_url(version)))
    link = re.search(r'href="([^"]+/files/weights/model\.bin)"', page).group(1)
    response = client.get(link)
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment")
    assert b"".join(response.streaming_content) == WEIGHTS


def test_download_before_verification_is_refused(client, editor, version):
    client.force_login(editor)
    upload(client, version)
    url = reverse("registry:file-download", args=[version.model.name, 1, "model.bin"])
    assert url not in html(client.get(version_url(version)))
    response = client.get(url, follow=True)
    assert response.redirect_chain[-1][0] == version_url(version)
    assert "model.bin cannot be downloaded: The version is not verified yet." in html(response)


def test_download_of_a_missing_file_is_404(client, viewer, version):
    client.force_login(viewer)
    url = reverse("registry:file-download", args=[version.model.name, 1, "../../etc/passwd"])
    assert client.get(url).status_code == 404


def test_superuser_sees_private_models(client, superuser, ml_model):
    client.force_login(superuser)
    assert client.get(model_url(ml_model.name)).status_code == 200


def test_team_grant_gives_access(client, ml_model):
    from django.contrib.auth.models import Group

    team = Group.objects.create(name="risk-team")
    member: User = make_user("erin")
    member.groups.add(team)
    grant(team, ml_model, "viewer")
    client.force_login(member)
    assert client.get(model_url(ml_model.name)).status_code == 200
