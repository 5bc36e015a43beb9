"""The check a management command that reads or writes the database makes before anything else.

On a fresh clone (or a new DATABASE_URL) the tables do not exist yet, and the command would end in a
traceback ("no such table: provisioner_site") that tells a newcomer nothing. The commands do not migrate
on their own: against a production PostgreSQL, changing the schema is the operator's decision."""

from __future__ import annotations

from django.core.management.base import CommandError
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor


def describe(using: str = DEFAULT_DB_ALIAS) -> str:
    """Which database this is, for people: the SQLite file, or PostgreSQL's name and host."""
    db = connections[using].settings_dict
    if str(db["ENGINE"]).endswith("sqlite3"):
        return f"SQLite {db['NAME']}"
    return f"{db['NAME']} on {db.get('HOST') or 'localhost'}"


def require_migrated_database(using: str = DEFAULT_DB_ALIAS) -> None:
    """Return quietly when every migration is applied.

    :raises CommandError: the database cannot be reached, or has migrations left to apply (a fresh one has
        them all left), with the command that sets it up."""
    try:
        executor = MigrationExecutor(connections[using])
        missing = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as exc:
        raise CommandError(f"Cannot reach the database ({describe(using)}): {exc}") from exc
    if missing:
        raise CommandError(
            f"The database ({describe(using)}) is not set up yet ({len(missing)} migrations not applied): "
            "run `python manage.py migrate` first."
        )
