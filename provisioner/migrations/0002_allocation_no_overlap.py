"""On PostgreSQL, make overlapping active allocations of one node impossible in the database itself.

SQLite has no exclusion constraints; there the reservation service's IMMEDIATE transactions serialize
writers instead (see provisioner/services/reservations.py).
"""

from django.db import migrations

CREATE = """
CREATE EXTENSION IF NOT EXISTS btree_gist;
ALTER TABLE provisioner_allocation
  ADD CONSTRAINT allocation_no_overlap
  EXCLUDE USING gist (
    node_id WITH =,
    tstzrange(starts_at, COALESCE(ends_at, 'infinity'::timestamptz), '[)') WITH &&
  ) WHERE (active);
"""
DROP = "ALTER TABLE provisioner_allocation DROP CONSTRAINT IF EXISTS allocation_no_overlap;"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("provisioner", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
