"""The page every API list answers with: limit/offset, with both values kept to numbers the database takes."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.views import APIView


class NeocloudPagination(LimitOffsetPagination):
    """DRF's limit/offset pagination (``?limit=50&offset=100``; ``count``, ``next``, ``previous``, ``results``)
    with bounds, so that no query value reaches SQL as a LIMIT or OFFSET past a 64-bit integer (a 500).

    Out-of-range values are clamped, never refused, as DRF does with ``max_limit``:

    - ``limit`` above ``max_limit`` returns a page of ``max_limit`` rows, and ``next`` says so (``limit=500``).
    - ``offset`` past the last row returns an empty page; the offset is taken as ``count``, so ``previous``
      leads back to the last page (it read ``offset - limit``, an offset with nothing behind it).
    - A limit or offset that is no number, negative, or zero (limit), falls back to the default (DRF's rule).
    """

    max_limit = 500
    limit_query_description = (
        f"Number of results to return per page (default {LimitOffsetPagination.default_limit}, at most {max_limit}: "
        "a larger limit returns that many)."
    )
    offset_query_description = (
        "The initial index from which to return the results; past the last result, an empty page."
    )

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: APIView | None = None
    ) -> list[Any] | None:
        # DRF answers an offset beyond count with [] before querying; the database sees offset <= count
        # and limit <= max_limit. Clamping afterwards only corrects the links.
        page = super().paginate_queryset(queryset, request, view)
        if page is not None and self.offset is not None and self.count is not None:
            self.offset = min(self.offset, self.count)
        return page
