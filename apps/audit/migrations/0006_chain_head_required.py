"""`audit_chain_head_required(prev)`: `prev`, or an error (SQLSTATE RG001) when it is NULL.

A statement that inserts rows and appends their events at once (`insert_and_record`) reads
the head through it: with no head row it fails as a whole, instead of committing rows
without their events; the caller seeds the head and runs it again.
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
"""
POSTGRES_DROP = "DROP FUNCTION IF EXISTS audit_chain_head_required(text);"


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
