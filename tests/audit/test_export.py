"""The audit export: streamed CSV and JSONL, permission-filtered, injection-safe, and
verifiable offline by the script published in docs/AUDIT.md (run here from the docs)."""

import csv
import io
import json
import re
import secrets
import tracemalloc
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from apps.audit import export
from apps.audit.chain import GENESIS_HASH
from apps.audit.models import AuditEvent
from apps.audit.services import audit_record
from apps.registry.services import model_create
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

EXPORT = reverse("audit:export")
SECRET = "fraud-model"
NASTY = {
    "crlf": "line one\r\nline two",
    "ansi": "\x1b[31mred\x1b[0m\x1b]0;title\x07",
    "html": "<script>alert(1)</script>",
    "formula": '=HYPERLINK("http://x","click")',
    "unicode": "naïve \u202eevil\u202c ✓ 🎉",
    "numbers": [1, 2.5, -3, 1e100, 10**30, True, None],
    "nested": {"b": {"c": [0.1, "x"]}},
}


def docs_verifier() -> dict:
    """The verification script exactly as published in docs/AUDIT.md."""
    text = (Path(settings.BASE_DIR) / "docs" / "AUDIT.md").read_text()
    script = re.search(r"```python\n(# verify_audit\.py.*?)```", text, re.S).group(1)
    assert len(script.splitlines()) <= 45, "the docs promise a short script"
    namespace: dict = {"__name__": "verify_audit"}
    exec(compile(script, "verify_audit.py", "exec"), namespace)
    return namespace


def body(response) -> str:
    assert response.streaming
    return b"".join(response.streaming_content).decode()


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def private_model(alice, bob):
    model = model_create(actor=alice, name=SECRET)
    assign_perm("registry.view_registeredmodel", bob, model)
    audit_record(actor=alice, action="demo.comment", target=model, changes=NASTY)
    return model


# --- The response ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_is_a_streamed_attachment(client, superuser, private_model, fmt):
    client.force_login(superuser)
    response = client.get(EXPORT, {"format": fmt})
    assert response.status_code == 200 and response.streaming
    disposition = response["Content-Disposition"]
    assert re.fullmatch(
        rf'attachment; filename="regent-audit-\d{{8}}T\d{{6}}Z\.{fmt}"', disposition
    )
    assert "no-store" in response["Cache-Control"]
    assert response["Content-Type"].startswith("text/csv" if fmt == "csv" else "application/")
    assert "demo.comment" in body(response)


def test_csv_is_only_a_header_when_nothing_matches(client, superuser, private_model):
    client.force_login(superuser)
    text = body(client.get(EXPORT, {"format": "csv", "action": "nothing.here"}))
    assert text == ",".join(export.COLUMNS) + "\r\n"
    assert body(client.get(EXPORT, {"format": "jsonl", "action": "nothing.here"})) == ""


@pytest.mark.parametrize("params", [{"format": "xml"}, {"format": "csv", "since": "soon"}])
def test_bad_requests_are_refused(client, superuser, params):
    client.force_login(superuser)
    assert client.get(EXPORT, params).status_code == 400


def test_anonymous_is_sent_to_sign_in(client, db):
    response = client.get(EXPORT, {"format": "csv"})
    assert response.status_code == 302


def test_export_records_itself_after_its_last_row(client, superuser, private_model):
    client.force_login(superuser)
    head = AuditEvent.objects.order_by("-id").first()
    events = jsonl(body(client.get(EXPORT, {"format": "jsonl"})))
    assert events[-1]["id"] == head.pk
    recorded = AuditEvent.objects.get(action="audit.exported")
    assert recorded.actor_id == superuser.pk
    assert recorded.changes == {"format": "jsonl", "filters": {}, "up_to_event": head.pk}


# --- Who exports what -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_outsider_exports_nothing_about_a_private_model(client, outsider, private_model, fmt):
    client.force_login(outsider)
    text = body(client.get(EXPORT, {"format": fmt}))
    assert SECRET not in text and "demo.comment" not in text
    text = body(client.get(EXPORT, {"format": fmt, "model": SECRET}))
    assert SECRET not in text and "demo.comment" not in text


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_viewer_exports_the_model_events(client, bob, private_model, fmt):
    client.force_login(bob)
    text = body(client.get(EXPORT, {"format": fmt, "model": SECRET}))
    rows = csv_rows(text) if fmt == "csv" else jsonl(text)
    assert {row["action"] for row in rows} == {"model.created", "demo.comment"}
    assert {int(row["model_id"]) for row in rows} == {private_model.pk}


def test_filters_apply_to_the_export(client, superuser, private_model):
    client.force_login(superuser)
    today = timezone.now().date().isoformat()
    params = {"format": "jsonl", "actor": "alice", "action": "model", "since": today}
    assert [row["action"] for row in jsonl(body(client.get(EXPORT, params)))] == ["model.created"]


# --- CSV: neutralised -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["=1+1", "+1", "-1", "@SUM(A1)", "\tcmd", "\rcmd", '=HYPERLINK("http://x")']
)
def test_csv_neutralises_formulas(client, superuser, alice, name):
    audit_record(actor=None, actor_name=name, action="demo.formula")
    client.force_login(superuser)
    rows = csv_rows(body(client.get(EXPORT, {"format": "csv", "action": "demo.formula"})))
    assert rows[0]["actor_name"] == "'" + name.replace("\r", "\\x0d")


def test_csv_spells_out_control_characters_and_keeps_rows_whole(client, superuser, private_model):
    client.force_login(superuser)
    text = body(client.get(EXPORT, {"format": "csv", "action": "demo.comment"}))
    assert "\x1b" not in text and "\u202e" not in text
    (row,) = csv_rows(text)
    changes = row["changes"]
    assert "\\u001b[31mred" in changes and "\\u202e" in changes  # JSON's own escapes
    assert row["action"] == "demo.comment" and row["target_label"] == SECRET


def test_csv_cells_neutralise_whatever_the_column():
    assert export.neutralise("-5") == "'-5"
    assert export.neutralise("5-") == "5-"
    assert export._csv_cell("changes", ["=x"]) == '["=x"]'
    assert export._csv_cell("changes", -5) == "'-5"
    assert export._csv_cell("model_id", None) == ""


# --- JSONL: exact and verifiable ------------------------------------------------------------


def test_jsonl_is_exact(client, superuser, private_model):
    huge = "=" + "x" * 1_000_000 + "\r\n\x1b"
    audit_record(actor=None, actor_name="\x1b[2J=evil\r\n", action="demo.huge", changes={"c": huge})
    client.force_login(superuser)
    text = body(client.get(EXPORT, {"format": "jsonl", "action": "demo"}))
    assert text.isascii() and "\x1b" not in text
    by_action = {row["action"]: row for row in jsonl(text)}
    assert (
        by_action["demo.comment"]["changes"]
        == AuditEvent.objects.get(action="demo.comment").changes
    )
    assert by_action["demo.comment"]["changes"]["crlf"] == NASTY["crlf"]
    assert by_action["demo.huge"]["changes"]["c"] == huge
    assert by_action["demo.huge"]["actor_name"] == "\x1b[2J=evil\r\n"
    event = AuditEvent.objects.get(action="demo.huge")
    assert by_action["demo.huge"]["hash"] == event.hash
    assert set(by_action["demo.huge"]) == set(export.COLUMNS)


def test_full_export_verifies_offline_from_the_genesis(client, superuser, private_model):
    verify = docs_verifier()["verify"]
    client.force_login(superuser)
    lines = body(client.get(EXPORT, {"format": "jsonl"})).splitlines()
    count, head = verify(lines, GENESIS_HASH)
    assert count == len(lines) == AuditEvent.objects.count() - 1  # all but the export's own
    assert head == AuditEvent.objects.exclude(action="audit.exported").order_by("-id")[0].hash


def test_offline_verification_catches_tampering(client, superuser, private_model):
    verify = docs_verifier()["verify"]
    client.force_login(superuser)
    lines = body(client.get(EXPORT, {"format": "jsonl"})).splitlines()
    edited = [line.replace('"alice"', '"mallory"') for line in lines]
    with pytest.raises(ValueError, match="does not match its hash"):
        verify(edited, GENESIS_HASH)
    with pytest.raises(ValueError, match="does not follow"):
        verify(lines[:1] + lines[2:], GENESIS_HASH)
    with pytest.raises(ValueError, match="does not follow"):
        verify(lines, "f" * 64)  # not the anchored predecessor
    swapped = lines[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(ValueError):
        verify(swapped, GENESIS_HASH)


def test_filtered_export_verifies_as_a_slice(client, bob, private_model):
    verify = docs_verifier()["verify"]
    client.force_login(bob)
    lines = body(client.get(EXPORT, {"format": "jsonl", "model": SECRET})).splitlines()
    assert verify(lines, linked=False)[0] == len(lines) == 2


def test_hidden_parents_are_redacted_and_skipped_by_the_slice_check(
    client, alice, bob, private_model
):
    from apps.registry.services import version_create

    hidden = model_create(actor=alice, name="hidden-base")
    version_create(actor=alice, model=hidden)
    version_create(actor=alice, model=private_model, parents=["hidden-base/1"])
    client.force_login(bob)
    assert "hidden-base" not in body(client.get(EXPORT, {"format": "csv", "model": SECRET}))
    text = body(client.get(EXPORT, {"format": "jsonl", "model": SECRET}))
    assert "hidden-base" not in text
    rows = jsonl(text)
    (redacted,) = [row for row in rows if row.get("redacted")]
    assert redacted["action"] == "version.created" and redacted["changes"]["after"]["parents"] == []
    verify = docs_verifier()["verify"]
    assert verify(text.splitlines(), linked=False)[0] == len(rows) - 1
    client.force_login(alice)  # sees both models: nothing to redact, every row verifies
    lines = body(client.get(EXPORT, {"format": "jsonl", "model": SECRET})).splitlines()
    assert "hidden-base/1" in "".join(lines) and '"redacted"' not in "".join(lines)
    assert verify(lines, linked=False)[0] == len(lines)


def test_the_script_runs_from_the_command_line(client, superuser, private_model, tmp_path):
    import subprocess
    import sys

    client.force_login(superuser)
    exported = tmp_path / "export.jsonl"
    exported.write_text(body(client.get(EXPORT, {"format": "jsonl"})))
    script = tmp_path / "verify_audit.py"
    text = (Path(settings.BASE_DIR) / "docs" / "AUDIT.md").read_text()
    script.write_text(re.search(r"```python\n(# verify_audit\.py.*?)```", text, re.S).group(1))
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(exported), GENESIS_HASH],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: ")


# --- Constant memory ------------------------------------------------------------------------


def bulk_events(count: int, payload: int) -> None:
    """Rows inserted directly (hashes are not chained: only memory is measured here)."""
    now = timezone.now()
    AuditEvent.objects.bulk_create(
        AuditEvent(
            at=now,
            actor_name="bulk",
            action="demo.bulk",
            changes={"blob": "x" * payload},
            via="system",
            prev_hash=secrets.token_hex(32),
            hash=secrets.token_hex(32),
        )
        for _ in range(count)
    )


def test_export_reads_keyset_pages():
    bulk_events(1_200, payload=10)
    with CaptureQueriesContext(connection) as queries:
        rows = list(export.export_rows(AuditEvent.objects.filter(action="demo.bulk")))
    assert len(rows) == 1_200
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    # ceil(1200 / 500) pages and one empty page that ends the loop, each bounded.
    assert len(queries) == 4
    assert all(f"LIMIT {export.CHUNK_ROWS}" in query["sql"] for query in queries)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_streams_in_bounded_memory(client, superuser, fmt):
    # 20 000 events of ~0.5 KB: ten chunks. Holding them all would need more than the export's
    # size; streaming holds about one chunk (rows plus the driver's buffer).
    bulk_events(20_000, payload=500)
    client.force_login(superuser)
    response = client.get(EXPORT, {"format": fmt, "action": "demo.bulk"})
    tracemalloc.start()
    total = 0
    for block in response.streaming_content:
        total += len(block)
        assert len(block) < 2 * export.BLOCK_BYTES + 20_000
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total > 10_000_000
    assert peak < total / 2, f"peak {peak:,} bytes for a {total:,}-byte export"
