"""Guards for a statement that inserts rows and appends their events at once
(`apps.audit.services.record_inserted`), so that it fails as a whole instead of committing
rows without what must come with them:

- `audit_chain_head_required(prev)`: `prev`, or an error (SQLSTATE RG001) when it is NULL,
  i.e. there is no head row; the caller seeds the head and runs the statement again;
- `audit_no_deliveries_due(waiting)`: `waiting`, or an error (SQLSTATE RG002) when it is above
  zero, i.e. webhooks wait for these events; their deliveries must commit with them, so the
  caller takes its transactional path instead.
"""

from django.db import migrations

POSTGRES_CREATE = r"""
CREATE OR REPLACE FUNCTION audit_chain_head_required(prev text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF prev IS NULL THEN
        RAISE EXCEPTION 'the audit chain head row is missing' USING ERRCODE = 'RG001';
    END IF;
    RETURN prev;
END;
$$;
CREATE OR REPLACE FUNCTION audit_no_deliveries_due(waiting bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF waiting > 0 THEN
        RAISE EXCEPTION 'webhooks wait for these events' USING ERRCODE = 'RG002';
    END IF;
    RETURN waiting;
END;
$$;
"""
POSTGRES_DROP = """
DROP FUNCTION IF EXISTS audit_chain_head_required(text);
DROP FUNCTION IF EXISTS audit_no_deliveries_due(bigint);
"""


def create_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_CREATE, params=None)


def drop_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0005_chain_head"),
    ]

    operations = [
        migrations.RunPython(create_function, drop_function),
    ]
