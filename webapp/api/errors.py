"""One error shape for the whole API: {"error": {"code": "...", "message": "...", "details": {...}}}."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from provisioner.errors import (
    CapacityError,
    IllegalTransition,
    InvalidNodeData,
    InvalidNodesData,
    NeocloudError,
    NodeLocked,
    QuotaExceeded,
)
from provisioner.services.tenancy import NotPermitted

_STATUS_FOR = {
    CapacityError: status.HTTP_409_CONFLICT,
    IllegalTransition: status.HTTP_409_CONFLICT,
    NodeLocked: status.HTTP_409_CONFLICT,
    QuotaExceeded: status.HTTP_403_FORBIDDEN,
    NotPermitted: status.HTTP_403_FORBIDDEN,
    # bad node data found by the drivers' validation when work is accepted: the request cannot be done as
    # the data stands (details: [{node, field, reason}])
    InvalidNodeData: status.HTTP_400_BAD_REQUEST,
    InvalidNodesData: status.HTTP_400_BAD_REQUEST,
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, NeocloudError):
        http_status = next(
            (s for cls, s in _STATUS_FOR.items() if isinstance(exc, cls)), status.HTTP_400_BAD_REQUEST
        )
        details = exc.details() if isinstance(exc, InvalidNodeData | InvalidNodesData) else None
        return Response(error_body(exc.code, str(exc), details), status=http_status)
    # Django refuses these while DRF reads the body; unhandled, they became its HTML 400.
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            error_body("too_large", f"a request body may be at most {limit} bytes"),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return Response(error_body("invalid_request", str(exc)), status=status.HTTP_400_BAD_REQUEST)
    # Django's own exceptions become DRF's here so that their codes are the specific ones (not_found, ...).
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
    code: str = codes if isinstance(codes, str) else str(getattr(exc, "default_code", "error"))
    if isinstance(detail, dict) and set(detail) == {"detail"}:
        message = str(detail["detail"])
        details = None
    else:
        message = "the request is not valid; see details" if response.status_code == 400 else str(exc)
        details = detail
        if response.status_code == 400:
            code = "invalid_request"
    response.data = error_body(str(code), message, details)
    return response
