"""Querysets compiled to SQL once per process, then run with each call's own values.

Building a statement with the ORM (filters resolved, joins set up, SQL compiled) costs more CPU than the
database takes to run a small one: about 0.3 to 1 ms of Python against 0.05 ms to send and read it. The few
statements that every booking and release runs have a fixed shape, so they are built once: a function builds
the queryset from sentinel arguments (values no caller passes), the places of those values among the compiled
statement's parameters are found, and each run puts its own values there. Rows come back through the ORM's
own converters (SQLite's datetimes and booleans, JSON), as ``values_list()`` returns them. The statement is the
ORM's, so it reads the same on SQLite and PostgreSQL; what a statement means does not change, only who
builds it how often. A sentinel that does not come back among the parameters (a filter on it was optimized
away) fails at once, at the first run.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from django.db import connection
from django.db.models import ForeignKey, Model, QuerySet

M = TypeVar("M", bound=Model)

# The kinds of argument a prepared query takes, each with the sentinels its builder is called with.
INT, TEXT, DATETIME = "int", "text", "datetime"


def _sentinel(kind: str, index: int) -> Any:
    if kind == INT:
        return -(10**15) - 7919 * index  # ids are never negative
    if kind == TEXT:
        return f"prepared-sentinel-{index}-7c1e9b"
    if kind == DATETIME:
        return dt.datetime(1901, 2, 3, 4, 5, 6, index + 1, tzinfo=dt.UTC)
    raise ValueError(f"unknown kind of argument {kind!r}: one of {INT}, {TEXT}, {DATETIME}")


class _Compiled:
    """One prepared query's statement on one database vendor."""

    def __init__(self, sql: str, params: list[Any], places: list[tuple[int, int]], converters: Any) -> None:
        self.sql = sql
        self.params = params
        self.places = places  # (parameter index, argument index)
        self.converters = converters  # as SQLCompiler.get_converters returns them


class PreparedQuery:
    """``build(*arguments)`` (a ``values_list()`` queryset) compiled once per database vendor.

    ``kinds`` says what each argument is (INT, TEXT or DATETIME): its sentinel, and how a value of it is
    adapted for the database (a datetime as the ORM adapts one). ``rows(*arguments)`` runs it.
    """

    def __init__(self, build: Callable[..., QuerySet[Any]], *kinds: str) -> None:
        self.build = build
        self.kinds = kinds
        self._compiled: dict[str, _Compiled] = {}
        self._lock = threading.Lock()

    def _compile(self) -> _Compiled:
        sentinels = [_sentinel(kind, i) for i, kind in enumerate(self.kinds)]
        queryset = self.build(*sentinels)
        compiler = queryset.query.get_compiler(connection=connection)
        sql, params = compiler.as_sql()
        adapted = [self._adapt(kind, value) for kind, value in zip(self.kinds, sentinels, strict=True)]
        places = [(p, a) for p, value in enumerate(params) for a, want in enumerate(adapted) if value == want]
        missing = set(range(len(self.kinds))) - {a for _, a in places}
        if missing:
            raise RuntimeError(
                f"{self.build.__qualname__}: argument(s) {sorted(missing)} do not reach the statement as "
                "parameters; prepare another shape"
            )
        fields = [column for column, _, _ in compiler.select[: compiler.col_count]]
        return _Compiled(sql, list(params), places, compiler.get_converters(fields))

    @staticmethod
    def _adapt(kind: str, value: Any) -> Any:
        if kind == DATETIME and value is not None:
            return connection.ops.adapt_datetimefield_value(value)
        return value

    def rows(self, *arguments: Any) -> list[tuple[Any, ...]]:
        """The statement's rows for these arguments, converted as ``values_list()`` converts them."""
        compiled = self._compiled.get(connection.vendor)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.setdefault(connection.vendor, self._compile())
        params = list(compiled.params)
        for place, argument in compiled.places:
            params[place] = self._adapt(self.kinds[argument], arguments[argument])
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            found: Sequence[Any] = cursor.fetchall()
        if not compiled.converters:
            return [tuple(row) for row in found]
        return [_convert(row, compiled.converters) for row in found]


def _convert(row: Sequence[Any], converters: dict[int, tuple[list[Any], Any]]) -> tuple[Any, ...]:
    out = list(row)
    for position, (functions, expression) in converters.items():
        value = out[position]
        for function in functions:
            value = function(value, expression, connection)
        out[position] = value
    return tuple(out)


def columns(model: type[Model]) -> list[str]:
    """What a prepared query reads of ``model`` to make instances of it (``instances``): every column."""
    return [field.attname for field in model._meta.concrete_fields]


def instances(model: type[M], rows: Iterable[Sequence[Any]]) -> list[M]:
    """Instances of ``model`` from rows of its ``columns``, as a queryset of it would make them."""
    names = columns(model)
    return [model.from_db(connection.alias, names, list(row)) for row in rows]


def joined_columns(model: type[Model], related: dict[str, type[Model]], *extra: str) -> list[str]:
    """What a prepared query reads to make instances of ``model`` with the rows its foreign keys ``related``
    (name: model) point to, as ``select_related(*related)`` would (``joined``); then ``extra`` values."""
    out = columns(model)
    for name, other in related.items():
        out += [f"{name}__{column}" for column in columns(other)]
    return [*out, *extra]


def joined(
    model: type[M], related: dict[str, type[Model]], rows: Iterable[Sequence[Any]], *extra: str
) -> list[M]:
    """Instances of ``model`` from rows of ``joined_columns(model, related, *extra)``: each with its related
    rows in place (None where its foreign key is null), and each ``extra`` value set as an attribute."""
    names = columns(model)
    spans = []
    start = len(names)
    for name, other in related.items():
        width = len(columns(other))
        field = model._meta.get_field(name)
        assert isinstance(field, ForeignKey), f"{model.__name__}.{name} is no foreign key"
        spans.append((name, other, start, start + width, field.attname))
        start += width
    out = []
    for row in rows:
        obj = model.from_db(connection.alias, names, list(row[: len(names)]))
        for name, other, begin, end, attname in spans:
            target = None
            if getattr(obj, attname) is not None:
                target = other.from_db(connection.alias, columns(other), list(row[begin:end]))
            setattr(obj, name, target)
        for name, value in zip(extra, row[start:], strict=True):
            setattr(obj, name, value)
        out.append(obj)
    return out
