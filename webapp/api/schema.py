"""OpenAPI pieces drf-spectacular cannot infer: our Bearer token authentication, and choice lists written
as words rather than markdown."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


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
