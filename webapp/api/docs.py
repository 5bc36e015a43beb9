"""A self-contained API reference page rendered on the server from the OpenAPI schema.

Swagger UI and Redoc load their JavaScript from a CDN (or need drf-spectacular-sidecar, not installed); this
page needs neither, so it works offline. The machine-readable schema stays at /api/schema/."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views import View
from drf_spectacular.generators import SchemaGenerator

_METHODS = ("get", "post", "put", "patch", "delete")


def _ref_name(schema: dict[str, Any] | None) -> str:
    """A short label for a schema: its component name (also when wrapped in allOf to carry a default or
    nullable), 'array of X', 'X or Y', or its type."""
    if not schema:
        return ""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if len(schema.get("allOf", [])) == 1:
        return _ref_name(schema["allOf"][0])
    if schema.get("oneOf"):
        return " or ".join(_ref_name(s) for s in schema["oneOf"])
    if schema.get("type") == "array":
        return f"array of {_ref_name(schema.get('items'))}"
    return str(schema.get("type", "object"))


def _operations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for path, item in spec.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            responses = [
                {
                    "code": code,
                    "schema": _ref_name(r.get("content", {}).get("application/json", {}).get("schema")),
                }
                for code, r in sorted(op.get("responses", {}).items())
            ]
            rows.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "tag": (op.get("tags") or ["other"])[0],
                    "description": op.get("description", "").strip(),
                    "parameters": op.get("parameters", []),
                    "request": _ref_name(body),
                    "responses": responses,
                    "anchor": op.get("operationId", f"{method}-{path}"),
                }
            )
    return rows


def _component_link(schema: dict[str, Any], names: set[str]) -> str:
    """The component a field's type names, for a link to it ("" for plain types)."""
    name = _ref_name(schema).removeprefix("array of ")
    return name if name in names else ""


def _components(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    schemas = spec.get("components", {}).get("schemas", {})
    names = set(schemas)
    for name, schema in sorted(schemas.items()):
        required = set(schema.get("required", []))
        fields = [
            {
                "name": field,
                "type": _ref_name(f),
                "link": _component_link(f, names),
                "required": field in required,
                "read_only": f.get("readOnly", False),
                "description": f.get("description", ""),
            }
            for field, f in schema.get("properties", {}).items()
        ]
        out.append(
            {
                "name": name,
                "fields": fields,
                "enum": schema.get("enum"),
                "description": schema.get("description", ""),
            }
        )
    return out


class ApiDocsView(View):
    """GET /api/docs/: the API reference as plain HTML (no JavaScript, no external assets)."""

    def get(self, request: HttpRequest) -> HttpResponse:
        spec = SchemaGenerator().get_schema(request=None, public=True)
        context = {
            "info": spec.get("info", {}),
            # The description's first paragraph; the rest (the first token) is the page's own section.
            "summary": spec.get("info", {}).get("description", "").split("\n\n")[0],
            "base_url": request.build_absolute_uri("/").rstrip("/"),
            "tokens_page": reverse("portal:api_tokens"),
            "operations": _operations(spec),
            "components": _components(spec),
            "schema_url": reverse("api:schema"),
        }
        return render(request, "api/docs.html", context)
