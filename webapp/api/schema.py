"""OpenAPI pieces drf-spectacular cannot infer: our Bearer token authentication."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "webapp.api.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "an API token from POST /api/v1/tokens: 'Authorization: Bearer nck_...'",
        }


# Component names for choice sets that several serializers share under the same field name ("state").
ENUM_NAME_OVERRIDES = {
    "NodeStateEnum": "provisioner.states.NodeState",
    "OperationStateEnum": "provisioner.states.OperationState",
    "ReservationStateEnum": "provisioner.states.ReservationState",
    "StepStateEnum": "provisioner.states.StepState",
}
