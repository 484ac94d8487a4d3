"""Derive the mirror's served spec (sync/openapi.yaml) from the official registry's OpenAPI.

Kept: the read operations and the schemas they reference, under /v0.1 and /v0. Changed, and
said so in the spec: errors are problem JSON (as the live service sends them), 400/422 are
documented, health/ping/version are added, and `info` carries what ToolHive checks for.
Run: python tools/make_openapi.py tests/data/openapi.official.yaml > sync/openapi.yaml
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml

PROBLEM = {"$ref": "#/components/schemas/Problem"}
DESCRIPTION = """\
Read API of an mcp-subregistry mirror: a curated copy of an MCP registry, compatible with the
MCP Registry API of https://github.com/modelcontextprotocol/registry (spec 2025-12-01, read
operations only). The mirror serves `server` JSON exactly as its upstream published it; its
`_meta["io.modelcontextprotocol.registry/official"].updatedAt` is the time the mirror's own
copy last changed, and what the mirror adds sits under its own namespaced `_meta` key.
Errors are RFC 9457 problem JSON, as the official service returns them. Write operations
answer 405: a mirror is read-only.
"""

# RFC 3339 allows all of these; each gets a 200 (a bound before every stored stamp means
# everything, after them all nothing), never a 5xx.
SINCE_EXAMPLES = {
    "year_0000": "0000-01-01T00:00:00Z",
    "year_0001_east": "0001-01-01T00:00:00+23:59",
    "year_9999_west": "9999-12-31T23:59:59.999999999-23:59",
    "lowercase": "2025-08-07t13:15:04.28z",
    "long_fraction": "2025-08-07T13:15:04.280000000000000000001Z",
    "leap_second": "2016-12-31T23:59:60Z",
}


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _errors(operation: dict[str, Any], codes: dict[str, str]) -> None:
    responses = operation["responses"]
    for code in list(responses):
        if code != "200":
            del responses[code]
    for code, text in codes.items():
        responses[code] = {
            "description": text,
            "content": {"application/problem+json": {"schema": PROBLEM}},
        }


def main(source: str) -> None:
    with open(source, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    paths: dict[str, Any] = {}
    reads = {
        "/servers": {
            "400": "Bad cursor, bad updated_since, or include_deleted=false with it",
            "422": "limit or include_deleted invalid",
        },
        "/servers/{serverName}/versions": {
            "400": "NUL byte in the request",
            "404": "Server not found",
            "422": "include_deleted invalid",
        },
        "/servers/{serverName}/versions/{version}": {
            "400": "NUL byte in the request",
            "404": "Server or version not found",
            "422": "include_deleted invalid",
        },
    }
    for path, codes in reads.items():
        operation = copy.deepcopy(spec["paths"][f"/v0.1{path}"]["get"])
        _errors(operation, codes)
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query":
                # As on the official service (huma): an empty value is no value (the default).
                parameter["allowEmptyValue"] = True
            if parameter["name"] == "updated_since":
                parameter["examples"] = {
                    name: {"value": value} for name, value in SINCE_EXAMPLES.items()
                }
            if parameter["name"] == "limit":  # what the official service enforces (422)
                parameter["schema"] = {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 100,
                    "default": 30,
                }
        for prefix in ("/v0.1", "/v0"):
            op = copy.deepcopy(operation)
            if "operationId" in op:
                op["operationId"] += prefix.replace("/", "_").replace(".", "_")
            paths[f"{prefix}{path}"] = {"get": op}
    simple = {
        "/health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}},
        },
        "/ping": {
            "type": "object",
            "required": ["pong"],
            "properties": {"pong": {"type": "boolean"}},
        },
        "/version": {
            "type": "object",
            "required": ["version", "git_commit", "build_time"],
            "properties": {k: {"type": "string"} for k in ("version", "git_commit", "build_time")},
        },
    }
    for path, schema in simple.items():
        for prefix in ("/v0.1", "/v0"):
            paths[f"{prefix}{path}"] = {
                "get": {
                    "tags": ["ops"],
                    "summary": f"GET {path}",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {"application/json": {"schema": schema}},
                        }
                    },
                }
            }
    needed: set[str] = set()
    _refs(paths, needed)
    schemas = spec["components"]["schemas"]
    while True:
        before = len(needed)
        for name in list(needed - {"Problem"}):
            _refs(schemas[name], needed)
        if len(needed) == before:
            break
    components = {name: schemas[name] for name in sorted(needed) if name in schemas}
    # Upstream publishes `"repository": {}` (269 entries on 2025-12-12) and the mirror serves
    # what upstream published, so the mirror's spec cannot promise the fields are there.
    repository = copy.deepcopy(components["Repository"])
    repository.pop("required", None)
    repository["description"] += (
        " Served as published upstream: may be an empty object, so no field is required."
    )
    components["Repository"] = repository
    # Likewise upstream serves package versions such as "latest" that its schema forbids.
    package = copy.deepcopy(components["Package"])
    package["properties"]["version"].pop("not", None)
    components["Package"] = package
    # And arguments typed "" and inputs formatted "integer" (5 entries on 2025-12-12).
    for name in ("PositionalArgument", "NamedArgument"):
        argument = copy.deepcopy(components[name])
        argument["allOf"][1]["properties"]["type"].pop("enum", None)
        argument["description"] += " Served as published upstream: `type` may be another string."
        components[name] = argument
    value_input = copy.deepcopy(components["Input"])
    value_input["properties"]["format"].pop("enum", None)
    value_input["properties"]["format"]["description"] += (
        "\n\nServed as published upstream: other values occur."
    )
    components["Input"] = value_input
    components["Problem"] = {
        "type": "object",
        "required": ["title", "status"],
        "properties": {
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
    }
    out = {
        "openapi": spec["openapi"],
        "jsonSchemaDialect": spec.get("jsonSchemaDialect"),
        "info": {
            "title": "MCP Registry API (mcp-subregistry mirror)",
            "version": "1.0.0",
            "description": DESCRIPTION,
            "license": spec["info"].get("license"),
        },
        "tags": [{"name": "servers"}, {"name": "ops"}],
        "paths": paths,
        "components": {"schemas": components},
    }
    yaml.safe_dump(out, sys.stdout, sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    main(sys.argv[1])
