"""Preconditions about transactions, checked in code rather than stated in docstrings (as Ironic's
``require_exclusive_lock``): a function that locks rows or writes several rows that must change together
declares it, and calling it outside a transaction fails at once, in tests, instead of silently losing the
lock the moment its statement ends (autocommit)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import connection

P = ParamSpec("P")
R = TypeVar("R")


class NotInTransaction(RuntimeError):
    """A programming error: the function's row locks or writes need the caller's transaction."""


def requires_transaction(fn: Callable[P, R]) -> Callable[P, R]:
    """Refuse to run ``fn`` outside ``transaction.atomic()``.

    :raises NotInTransaction:
    """

    @functools.wraps(fn)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        if not connection.in_atomic_block:
            raise NotInTransaction(
                f"{fn.__qualname__} must be called inside a transaction (transaction.atomic)"
            )
        return fn(*args, **kwargs)

    return checked
