"""The chain head row, and the PostgreSQL function that hashes events onto it.

`audit_chain_hashes(prev, forms)` is `apps.audit.chain.event_hash` applied along `forms` (the
events' canonical forms): sha256 of the previous hash, a newline and the form, as lowercase
hex. `audit_verify` still recomputes every hash in Python. The head is seeded from the last
event, so a log written before this migration goes on from where it stands.
"""

from django.db import migrations, models

POSTGRES_CREATE = r"""
CREATE OR REPLACE FUNCTION audit_chain_hashes(prev text, forms text[]) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    hashes text[] := ARRAY[]::text[];
    form text;
BEGIN
    FOREACH form IN ARRAY forms LOOP
        prev := encode(sha256(convert_to(prev || E'\n' || form, 'UTF8')), 'hex');
        hashes := hashes || prev;
    END LOOP;
    RETURN hashes;
END;
$$;
INSERT INTO audit_auditchainhead (id, prev_hash, hash)
    SELECT 1, prev_hash, hash FROM audit_auditevent ORDER BY id DESC LIMIT 1;
"""
POSTGRES_DROP = "DROP FUNCTION IF EXISTS audit_chain_hashes(text, text[]);"


def create_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_CREATE, params=None)


def drop_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0004_webhook_previous_secret"),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditChainHead",
            fields=[
                ("id", models.PositiveSmallIntegerField(primary_key=True, serialize=False)),
                ("prev_hash", models.CharField(max_length=64)),
                ("hash", models.CharField(max_length=64)),
            ],
            options={
                "constraints": [
                    models.CheckConstraint(condition=models.Q(("id", 1)), name="audit_head_single")
                ],
            },
        ),
        migrations.RunPython(create_function, drop_function),
    ]
