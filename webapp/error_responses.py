"""What a client sees when a request fails outside a view's own error handling: the API and the boot
service's agent API answer in the API's one JSON error shape, the portal with a plain page; a server error
names the request id (also in the log and the X-Request-ID header) and nothing else.

Django shows its debug page for a server error when DEBUG is on, with the settings and the request's
environment (under runserver and gunicorn, the process environment: DATABASE_URL and all). Here DEBUG is
off unless asked for by name (NEOCLOUD_DEBUG), and even then:
- ``SafeErrorMiddleware`` answers an exception a view raised as below, whatever DEBUG;
- ``NoSettingsReporterFilter`` empties the settings, the request's environment and the frames' variables
  of any debug page Django still shows (an exception raised in a middleware, under DEBUG).
The traceback of a server error goes to the log, with the request id.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, ItemsView
from typing import Any

from django.conf import settings
from django.core.exceptions import BadRequest, PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.core.signals import got_request_exception
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.utils.log import log_response
from django.views.debug import SafeExceptionReporterFilter

# Paths whose clients read JSON: the REST API and the deploy agents' API of the boot service.
JSON_PREFIXES = ("/api/", "/boot/api/")


def request_id(request: HttpRequest) -> str:
    return str(getattr(request, "request_id", "") or "unknown")


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(JSON_PREFIXES)


def _answer(request: HttpRequest, status: int, code: str, message: str, details: Any = None) -> HttpResponse:
    if _wants_json(request):
        error: dict[str, Any] = {"code": code, "message": message}
        if details:
            error["details"] = details
        return JsonResponse({"error": error}, status=status)
    page = (
        f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{status}</title></head>\n"
        f"<body><h1>{status}</h1><p>{html.escape(message)}</p></body></html>\n"
    )
    return HttpResponse(page, status=status, content_type="text/html; charset=utf-8")


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500, and the answer to any exception a view raises."""
    rid = request_id(request)
    return _answer(
        request,
        500,
        "server_error",
        f"the server failed to answer this request; the operators find it under request id {rid}",
        {"request_id": rid},
    )


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler400: Django refused the request before a view saw it (a body too large, too many fields)."""
    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return _answer(request, 413, "too_large", f"a request body may be at most {limit} bytes")
    return _answer(request, 400, "invalid_request", "the request is not valid")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler403: with the refusal's own sentence where it has one (the portal's "This page is for
    operators.")."""
    return _answer(request, 403, "permission_denied", str(exception or "") or "you may not do this")


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: no page or endpoint at this address."""
    return _answer(request, 404, "not_found", f"nothing at {request.path}")


class SafeErrorMiddleware:
    """Answers an exception a view raised with ``server_error``, whatever DEBUG, as Django does without
    DEBUG: the got_request_exception signal (the test client re-raises on it), the traceback logged.
    Refusals Django answers with a 4xx (not found, forbidden, bad request) are left to it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        refusals = (Http404, PermissionDenied, MultiPartParserError, BadRequest, SuspiciousOperation)
        if isinstance(exception, refusals):
            return None
        got_request_exception.send(sender=None, request=request)
        response = server_error(request)
        log_response(
            "%s: %s",
            response.reason_phrase,
            request.path,
            response=response,
            request=request,
            exception=exception,
        )
        return response


class NoSettingsReporterFilter(SafeExceptionReporterFilter):
    """Error reports (Django's debug page, its error e-mails) without settings, the request's environment
    (META: under a WSGI server, the process environment), cookies or the frames' local variables: any of
    them may hold a secret. The exception and the traceback's lines stay."""

    def get_safe_settings(self) -> dict[str, Any]:
        return {}

    def get_safe_request_meta(self, request: HttpRequest) -> dict[str, Any]:
        return {}

    def get_safe_cookies(self, request: HttpRequest) -> dict[str, Any]:
        return {}

    def get_traceback_frame_variables(
        self, request: HttpRequest | None, tb_frame: Any
    ) -> ItemsView[str, Any]:
        return {}.items()


class RequestIdLogFilter(logging.Filter):
    """Adds the request id to Django's request log lines ("Internal Server Error: /path"), so that the
    id a client was given finds the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        rid = getattr(request, "request_id", None)
        if rid:
            record.msg = f"{record.getMessage()} [request {rid}]"
            record.args = ()
        return True
