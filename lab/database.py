"""The lab's commands set up their (development) database themselves: a newcomer's first `manage.py demo` or
`manage.py lab up` on a fresh clone works instead of ending in "no such table". The lab is never installed in
production (it is not in the wheel), so this never changes a production schema; the product's own commands
only say what to run (provisioner.management.database)."""

from __future__ import annotations

from collections.abc import Callable

from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor


def migrate_if_needed(say: Callable[[str], object]) -> None:
    """Apply the migrations the database lacks, saying so in one line."""
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    missing = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if missing:
        say(f"setting up the database ({len(missing)} migrations): manage.py migrate")
        call_command("migrate", verbosity=0)
