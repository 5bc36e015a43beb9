"""JSON from outside (API bodies, deploy agents' reports), parsed with a limit on how deep it nests.

Python's parser recurses once per level: ``"[" * 2000`` in a 4 KB body ends in a RecursionError, which no
caller expects from a parser (they catch ValueError) and so became a 500. Nothing Neocloud accepts nests
more than a few levels, so a body deeper than ``MAX_JSON_DEPTH`` is refused as not valid input, whether the
parser gave up on it or not.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

# Levels of arrays and objects inside one another. The deepest body the API or the boot service reads
# has three; the margin is for clients that wrap what they send.
MAX_JSON_DEPTH = 32


class JsonTooDeep(ValueError):
    """A JSON document nested more than MAX_JSON_DEPTH levels deep; the message says so in words."""

    def __init__(self) -> None:
        super().__init__(f"JSON may nest at most {MAX_JSON_DEPTH} levels of arrays and objects")


def nesting_depth(value: Any) -> int:
    """How many arrays and objects are nested inside one another in ``value`` (a scalar is 0). Iterative,
    so that it cannot itself run out of stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def load_json(raw: str | bytes, *, parse_constant: Callable[[str], Any] | None = None) -> Any:
    """``json.loads(raw)`` that raises ValueError (JsonTooDeep for nesting) for every document it refuses:
    malformed, or nested deeper than MAX_JSON_DEPTH."""
    try:
        value = json.loads(raw, parse_constant=parse_constant)
    except RecursionError:
        raise JsonTooDeep() from None
    if nesting_depth(value) > MAX_JSON_DEPTH:
        raise JsonTooDeep()
    return value
