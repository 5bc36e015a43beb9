"""The API's JSON parser: DRF's, with a limit on nesting (provisioner/json_input.py says why)."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from provisioner.json_input import MAX_JSON_DEPTH, JsonTooDeep, nesting_depth


class LimitedDepthJSONParser(JSONParser):
    """Refuses a body nested deeper than MAX_JSON_DEPTH with DRF's ParseError (a 400 in the API's error
    shape), including one so deep that the parser itself gave up with a RecursionError."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - {JsonTooDeep()}") from None
        if nesting_depth(data) > MAX_JSON_DEPTH:
            raise ParseError(f"JSON parse error - {JsonTooDeep()}")
        return data
