"""Check JSON bodies against an OpenAPI 3.0 document such as TGI's published ``openapi.json``.

OpenAPI 3.0 schema objects are almost JSON Schema: ``to_json_schema`` turns component references
(``#/components/schemas/X``) into ``$defs`` references and ``nullable: true`` into a ``null``
branch, so that ``jsonschema``'s Draft 2020-12 validator checks them. TGI's generator writes 3.1's
numeric ``exclusiveMinimum: x`` into its 3.0 document, which Draft 2020-12 reads as meant;
``as_openapi_30`` spells those bounds as 3.0 does, for tools that read the document as 3.0
(schemathesis).

Standard library only; ``validator`` imports ``jsonschema`` (a ``dev`` dependency) when called.

Example (TGI's document instead: ``openapi = json.load(open("tgi/openapi.json"))``):
    >>> openapi = {"components": {"schemas": {"GenerateResponse": {
    ...     "type": "object",
    ...     "required": ["generated_text"],
    ...     "properties": {
    ...         "generated_text": {"type": "string"},
    ...         "details": {"type": "object", "nullable": True},
    ...     },
    ... }}}}
    >>> check = validator(openapi, component("GenerateResponse"))
    >>> check.is_valid({"generated_text": "Hi", "details": None})
    True
    >>> check.is_valid({"details": None})
    False
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema

__all__ = ["as_openapi_30", "component", "response_schema", "to_json_schema", "validator"]

COMPONENTS = "#/components/schemas/"
_NOT_JSON_SCHEMA = ("nullable", "example", "default")


def component(name: str) -> dict[str, str]:
    """The OpenAPI schema object that references component ``name``: ``{"$ref": ...}``."""
    return {"$ref": COMPONENTS + name}


def to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema: component refs to ``$defs``, ``nullable`` to null.

    ``example`` and ``default`` are dropped: they annotate, they do not constrain.
    """
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value) for key, value in node.items() if key not in _NOT_JSON_SCHEMA}
    if "$ref" in out:
        out["$ref"] = "#/$defs/" + out["$ref"].removeprefix(COMPONENTS)
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") else out


def validator(openapi: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A Draft 2020-12 validator for ``schema`` (an OpenAPI schema object) within ``openapi``.

    Every component of ``openapi`` is available to ``schema``'s references.
    """
    import jsonschema

    defs = {name: to_json_schema(s) for name, s in openapi["components"]["schemas"].items()}
    return jsonschema.Draft202012Validator({**to_json_schema(schema), "$defs": defs})


def response_schema(
    openapi: dict[str, Any],
    method: str,
    path: str,
    status: str,
    media: str = "application/json",
) -> dict[str, Any]:
    """The schema ``openapi`` declares for ``method path``'s ``status`` answer as ``media``."""
    schema: dict[str, Any] = openapi["paths"][path][method]["responses"][status]["content"][media][
        "schema"
    ]
    return schema


def as_openapi_30(node: Any) -> Any:
    """Respell 3.1's numeric ``exclusiveMinimum: x`` (and maximum) as 3.0's ``minimum: x,
    exclusiveMinimum: true``; where an inclusive bound is already stricter, drop the exclusive one.
    """
    if isinstance(node, list):
        return [as_openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: as_openapi_30(value) for key, value in node.items()}
    for bound, exclusive, stricter in (
        ("minimum", "exclusiveMinimum", max),
        ("maximum", "exclusiveMaximum", min),
    ):
        limit = out.get(exclusive)
        if isinstance(limit, bool) or not isinstance(limit, int | float):
            continue
        if bound in out and stricter(out[bound], limit) != limit:
            del out[exclusive]
        else:
            out[bound], out[exclusive] = limit, True
    return out
