"""OpenAPI pieces drf-spectacular cannot infer: our Bearer token authentication, the error answers every
operation can give, and choice lists written as words rather than markdown."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import permissions
from rest_framework.authentication import SessionAuthentication

from webapp.api.serializers.common import ErrorSerializer


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "webapp.api.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An API token: 'Authorization: Bearer nck_...'. The first one comes from the portal's API "
                "tokens page, or from POST /api/v1/tokens made with a signed-in portal session."
            ),
        }


# What a view's own declaration of an error answer says when it says nothing more (webapp/api/customer.errors):
# where the machinery gives that status too, the machinery's reason is the description.
GENERIC_ERROR_DESCRIPTION = "error"

# Query parameters that are never refused: pagination clamps them (webapp/api/pagination.py).
_NEVER_REFUSED = {"limit", "offset"}


class NeocloudAutoSchema(AutoSchema):
    """drf-spectacular's AutoSchema, with the error answers that the API's machinery (authentication,
    permissions, content negotiation, parsers, filters, lookups) gives whatever the view says, added to every
    operation they apply to, each in the API's one error shape (webapp/api/errors.py). A view declares only
    the answers of its own rules (409 for a conflict, 403 for a quota); those it declares are kept, with the
    machinery's reason as their description where they said only "error".

    What applies, from the view and the generated operation:

    - 401: the view requires authentication (no token, or an invalid, revoked or expired one).
    - 403: a permission beyond "signed in" (operators only; owners only, for the actions that
      ``applies_to`` names); or a change made with a portal session, which needs its CSRF token.
    - 404: a path with parameters (no such row, or not yours).
    - 400: a request body, or query parameters that can be refused (filters, windows).
    - 406: always (an Accept header the API cannot answer).
    - 413 and 415: a request body (too large; a content type the API does not parse).
    - 429: the view is throttled.
    A method that the path does not have (405) is no operation of the schema, so it appears nowhere.
    """

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        responses = operation["responses"]
        for code, description in self.error_statuses(operation).items():
            declared = responses.get(str(code))
            if declared is None:
                error = OpenApiResponse(ErrorSerializer, description=description)
                responses[str(code)] = self._get_response_for_code(error, str(code))
            elif declared.get("description") == GENERIC_ERROR_DESCRIPTION:
                declared["description"] = description
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def error_statuses(self, operation: dict[str, Any]) -> dict[int, str]:
        """The machinery's error answers for ``operation`` (this view, this method), with why each comes."""
        checks = self.view.get_permissions()
        statuses: dict[int, str] = {}
        has_body = "requestBody" in operation
        refusable_query = any(
            p["in"] == "query" and p["name"] not in _NEVER_REFUSED for p in operation.get("parameters", [])
        )
        if has_body or refusable_query:
            statuses[400] = "the request is not valid: details name each field or parameter and its problem"
        if not any(isinstance(check, permissions.AllowAny) for check in checks):
            statuses[401] = "no API token, or one that is invalid, revoked or expired"
        refusals = [
            str(getattr(check, "message", "not allowed"))
            for check in checks
            if not isinstance(check, (permissions.IsAuthenticated, permissions.AllowAny))
            and getattr(check, "applies_to", lambda view: True)(self.view)
        ]
        if self.method not in permissions.SAFE_METHODS and any(
            isinstance(auth, SessionAuthentication) for auth in self.view.get_authenticators()
        ):
            refusals.append("a change made with a portal session needs its CSRF token")
        if refusals:
            statuses[403] = "; ".join(refusals)
        if any(p["in"] == "path" for p in operation.get("parameters", [])):
            statuses[404] = "no such object, or none you can see"
        statuses[406] = "the Accept header names no media type the API answers with (it answers JSON)"
        if has_body:
            statuses[413] = "the request body is larger than the API takes"
            statuses[415] = "the request body's content type is none the API reads (JSON, form data)"
        if self.view.get_throttles():
            statuses[429] = "too many requests: wait as the Retry-After header says"
        return statuses


# Component names for choice sets that several serializers share under the same field name ("state").
ENUM_NAME_OVERRIDES = {
    "NodeStateEnum": "provisioner.states.NodeState",
    "OperationStateEnum": "provisioner.states.OperationState",
    "ReservationStateEnum": "provisioner.states.ReservationState",
    "StepStateEnum": "provisioner.states.StepState",
}


# drf-spectacular writes each choice set as markdown bullets, "* `on` - On" a line (plumbing's
# build_choice_description_list); only a markdown renderer makes that readable.
_CHOICE_LINE = re.compile(r"^\* `(?P<value>[^`]*)` - (?P<label>.*)$")


def _choice_words(value: str, label: str) -> str:
    """``value``, with its label only where the label says more than the value ("clean (wipe)")."""
    if re.sub(r"[^a-z0-9]", "", label.lower()) == re.sub(r"[^a-z0-9]", "", value.lower()):
        return value
    rest = label[len(value) :].strip() if label.lower().startswith(value.lower()) else ""
    if rest:  # "fake" - "Fake (tests)", "waiting" - "Waiting for capacity"
        return f"{value} {rest}" if rest.startswith("(") else f"{value} ({rest})"
    return f"{value} ({label[:1].lower() + label[1:]})"


def choices_in_words(description: str) -> str:
    """``description`` with every run of choice bullets turned into one sentence: "One of: on, off,
    unknown." Text around the bullets is kept. Pure."""
    out: list[str] = []
    run: list[str] = []
    for line in [*description.split("\n"), ""]:
        match = _CHOICE_LINE.match(line)
        if match:
            run.append(_choice_words(match["value"], match["label"].strip()))
            continue
        if run:
            out.append("One of: " + ", ".join(run) + ".")
            run = []
        out.append(line)
    return "\n".join(out[:-1])


def describe_choices_in_words(result: Any, generator: Any, request: Any, public: Any) -> Any:
    """drf-spectacular postprocessing hook, run after its enum hook: every description in the schema
    (enum components, query parameters, fields) lists its choices as a sentence, not as markdown."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "description" and isinstance(value, str) and "* `" in value:
                    node[key] = choices_in_words(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(result)
    return result
