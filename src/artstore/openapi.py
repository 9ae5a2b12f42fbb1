"""The OpenAPI 3.1 description of the API, served at ``/_openapi.json``.

A test compares its paths and methods with the app's routes, so it cannot drift, and
schemathesis checks the live service against it (tests/test_api_schema.py). 3.1, not 3.0: its
JSON Schema has ``propertyNames``, which says what an item name or metadata key may be.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .names import MAX_FILENAME_BYTES, filename_pattern, name_pattern
from .store import MAX_META_ITEMS, MAX_META_VALUE, META_KEY_RE

NAME = {"type": "string", "pattern": name_pattern(),
        "description": "1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit; not "
                       "index.html or index.json"}
SHA256 = {"type": "string", "pattern": "^[0-9A-Fa-f]{64}$"}
NULLABLE_STRING = {"type": ["string", "null"]}


def _param(name: str, schema: dict[str, Any] | None = None, where: str = "path",
           description: str = "") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path",
            "schema": schema or NAME, "description": description}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): {"$ref": f"#/components/responses/Problem{code}"} for code in codes}


PROJECT, ITEM = _param("project"), _param("item")
# Reads are public unless the read_requires_token setting is on: a token is optional.
READ = {"security": [{}, {"bearer": []}]}
WRITE_ERRORS = (400, 401, 403, 404)
UPLOAD_ERRORS = (400, 401, 403, 404, 409, 411, 413, 415, 422, 507)

STORED_BYTES = {"type": "integer", "minimum": 0,
                "description": "distinct bytes held, each content counted once"}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                       "status": {"type": "integer"}, "detail": {"type": "string"},
                       "request_id": NULLABLE_STRING},
    },
    "ItemSettings": {"oneOf": [
        {"type": "object", "required": ["type"], "additionalProperties": False,
         "properties": {"type": {"type": "string", "enum": ["html", "tgz", "zip"]},
                        "keep": {"type": "integer", "minimum": 1, "maximum": 10000,
                                 "description": "releases kept"}}},
        {"type": "object", "required": ["type"], "additionalProperties": False,
         "properties": {"type": {"type": "string", "enum": ["collection"]},
                        "depth": {"type": "integer", "minimum": 1, "maximum": 10000,
                                  "description": "files kept"}}},
    ]},
    "ProjectConfig": {
        "type": "object",
        "properties": {
            "description": {"type": "string", "maxLength": 1000},
            "items": {"type": "object", "additionalProperties": _ref("ItemSettings"),
                      "propertyNames": NAME, "description": "item names: " + NAME["description"]},
        },
        "additionalProperties": False,
    },
    "ProjectList": {
        "type": "object",
        "required": ["projects"],
        "properties": {"projects": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "description", "items"],
            "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                           "items": {"type": "array", "items": {"type": "string"}},
                           "last_publish": NULLABLE_STRING},
        }}},
    },
    "Project": {
        "type": "object",
        "required": ["name", "description", "items"],
        "properties": {
            "name": {"type": "string"}, "description": {"type": "string"},
            "created": {"type": "string",
                        "description": "creation id: changes only when the project is "
                                       "deleted and created again"},
            "items": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["type", "live"],
                "properties": {"type": {"type": "string"},
                               "keep": {"type": "integer"}, "depth": {"type": "integer"},
                               "live": NULLABLE_STRING,
                               "last_publish": NULLABLE_STRING,
                               "stored_bytes": STORED_BYTES},
            }},
            "stored_bytes": {**STORED_BYTES, "description": "distinct bytes the project's "
                                                            "items hold, each content once"},
        },
    },
    "Metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    "Upload": {
        "type": "object",
        "required": ["project", "item", "release", "sha256", "size", "files", "url",
                     "metadata", "warnings"],
        "properties": {
            "project": {"type": "string"}, "item": {"type": "string"},
            "release": {"type": "string",
                        "description": "release id; for a collection, the file name"},
            "sha256": {"type": "string"}, "size": {"type": "integer"},
            "files": {"type": "integer"}, "url": {"type": "string"},
            "metadata": _ref("Metadata"),
            "warnings": {"type": "array", "items": {"type": "string"}},
            "unwrapped": {**NULLABLE_STRING,
                          "description": "the single top-level directory that was published"},
        },
    },
    "Item": {
        "type": "object",
        "required": ["name", "type", "live"],
        "properties": {
            "name": {"type": "string"}, "type": {"type": "string"},
            "live": NULLABLE_STRING, "url": {"type": "string"},
            "keep": {"type": "integer"}, "depth": {"type": "integer"},
            "stored_bytes": STORED_BYTES,
            "releases": {"type": "array", "items": {
                "type": "object",
                "required": ["release", "created", "sha256", "size", "files", "metadata"],
                "properties": {"release": {"type": "string"}, "created": {"type": "string"},
                               "sha256": {"type": "string"}, "size": {"type": "integer"},
                               "files": {"type": "integer"}, "metadata": _ref("Metadata"),
                               "bytes": {"type": ["integer", "null"],
                                         "description": "the size of the release's files "
                                                        "(null until an old store's release "
                                                        "is upgraded)"}},
            }},
            "files": {"type": "array", "items": {
                "type": "object",
                "required": ["name", "size", "sha256", "created", "metadata", "url"],
                "properties": {"name": {"type": "string"}, "size": {"type": "integer"},
                               "sha256": {"type": "string"}, "created": {"type": "string"},
                               "metadata": _ref("Metadata"), "url": {"type": "string"}},
            }},
        },
    },
    "Whoami": {
        "type": "object", "required": ["admin", "project"],
        "properties": {"admin": {"type": "boolean"},
                       "project": {**NULLABLE_STRING,
                                   "description": "the project of a project token"}},
    },
    "NewToken": {
        "type": "object", "required": ["id", "token"],
        "properties": {"id": {"type": "string"}, "token": {"type": "string"},
                       "created": {"type": "string"}},
    },
    "TokenList": {
        "type": "object", "required": ["tokens"],
        "properties": {"tokens": {"type": "array", "items": {
            "type": "object", "required": ["id", "created"],
            "properties": {"id": {"type": "string"}, "created": {"type": "string"}}}}},
    },
}

CHECKSUM = _param("X-Checksum-Sha256", SHA256, "header", "expected SHA-256 of the upload")
METADATA_RULES = (f"up to {MAX_META_ITEMS} fields of metadata, keys of A-Z a-z 0-9 . _ - "
                  f"starting with a letter or digit, values up to {MAX_META_VALUE} characters")


def _filename() -> dict[str, Any]:
    """What a collection file may be called (computed on first use: it takes a moment)."""
    return {"type": "string", "pattern": filename_pattern(), "maxLength": MAX_FILENAME_BYTES,
            "description": f"at most {MAX_FILENAME_BYTES} bytes of UTF-8; no / or \\, no "
                           "control or format characters, not starting with '.', not a path "
                           "after NFKC normalisation, not index.html or index.json"}


def _form() -> dict[str, Any]:
    """The multipart upload: the file, an optional checksum, and the rest is metadata."""
    metadata = {"propertyNames": {"pattern": f"^{META_KEY_RE.pattern}$"},
                "additionalProperties": {"type": "string", "maxLength": MAX_META_VALUE}}
    return {"type": "object", "required": ["item"],
            "properties": {"item": {"type": "string", "format": "binary"}, "sha256": SHA256},
            **metadata,
            # Besides the file (and sha256 if sent) at most MAX_META_ITEMS fields.
            "anyOf": [{"maxProperties": MAX_META_ITEMS + 1},
                      {"required": ["sha256"], "maxProperties": MAX_META_ITEMS + 2}],
            "description": f"the file under 'item'; 'sha256'; other fields are {METADATA_RULES}"}


def _remove_file(summary: str) -> dict[str, Any]:
    return {"summary": summary, "responses": {"204": {"description": "removed"},
                                              **_errors(*WRITE_ERRORS, 409)}}


def _paths() -> dict[str, Any]:
    created = {"201": _json(_ref("Upload"), "published")}
    filename = _filename()
    # DELETE /<project>/<item>/<filename> serves a collection file named "latest" or
    # "rollback" too, so those paths have a DELETE.
    same_as_a_file = "remove the collection file of this name, as /{project}/{item}/{filename}"
    return {
        "/_health": {"get": {"summary": "liveness probe", "security": [],
                             "responses": {"200": _json({"type": "object"}, "ok")}}},
        "/_openapi.json": {"get": {"summary": "this document", "security": [],
                                   "responses": {"200": _json({"type": "object"}, "OpenAPI")}}},
        "/_metrics": {"get": {**READ,
            "summary": "upload counters, durations and free disk space, summed over all "
                       "worker processes (Prometheus text format)",
            "responses": {"200": {"description": "metrics", "content": {
                "text/plain": {"schema": {"type": "string"}}}}, **_errors(401)}}},
        "/_whoami": {"get": {
            "summary": "what the bearer token may do: the admin token, or a project's token",
            "responses": {"200": _json(_ref("Whoami"), "the token is valid"),
                          **_errors(401)}}},
        "/": {"get": {**READ, "summary": "list projects",
                      "responses": {"200": _json(_ref("ProjectList"), "projects"),
                                    **_errors(401)}}},
        "/{project}": {
            "parameters": [PROJECT],
            "get": {**READ, "summary": "a project's configuration and item states",
                    "responses": {"200": _json(_ref("Project"), "the project"),
                                  **_errors(400, 401, 404)}},
            "post": {"summary": "create a project (admin)",
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": _ref("ProjectConfig")}}},
                     # 404: a name starting with "_" is a path of the service's own.
                     "responses": {"201": _json(_ref("Project"), "created"),
                                   **_errors(400, 401, 403, 404, 409, 413, 415)}},
            "put": {"summary": "replace a project's configuration (admin)",
                    "parameters": [_param("prune", {"type": "boolean"}, "query",
                                          "allow removing items or changing their type")],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": _ref("ProjectConfig")}}},
                    "responses": {"200": _json(_ref("Project"), "updated"),
                                  **_errors(*WRITE_ERRORS, 409, 413, 415)}},
            "delete": {"summary": "delete a project, its files and its tokens (admin)",
                       "responses": {"204": {"description": "deleted"},
                                     **_errors(*WRITE_ERRORS)}},
        },
        "/{project}/_tokens": {
            "parameters": [PROJECT],
            "get": {"summary": "list a project's tokens (admin)",
                    "responses": {"200": _json(_ref("TokenList"), "tokens"),
                                  **_errors(*WRITE_ERRORS)}},
            "post": {"summary": "create a project token (admin); shown only in this answer",
                     "responses": {"201": _json(_ref("NewToken"), "the new token"),
                                   **_errors(*WRITE_ERRORS)}},
        },
        "/{project}/_tokens/{token_id}": {
            "parameters": [PROJECT, _param("token_id", {"type": "string"})],
            "delete": {"summary": "revoke a project token (admin)",
                       "responses": {"204": {"description": "revoked"},
                                     **_errors(*WRITE_ERRORS)}},
        },
        "/{project}/{item}": {
            "parameters": [PROJECT, ITEM],
            "get": {**READ,
                    "summary": "the item: live release, kept releases or collection files",
                    "responses": {"200": _json(_ref("Item"), "the item"),
                                  **_errors(400, 401, 404)}},
            "post": {"summary": "upload as multipart/form-data, file under key 'item'",
                     "parameters": [CHECKSUM],
                     "requestBody": {"required": True, "content": {"multipart/form-data": {
                         "schema": _form()}}},
                     "responses": {**created, **_errors(*UPLOAD_ERRORS)}},
            "put": {"summary": "upload the raw request body; other query parameters are "
                               + METADATA_RULES,
                    "parameters": [
                        _param("filename", filename, "query",
                               "the file's name: needed for a collection, an html item's "
                               "must end in .html or .htm (default index.html)"),
                        _param("sha256", SHA256, "query", "expected SHA-256 of the body"),
                        CHECKSUM],
                    "requestBody": {"required": True, "content": {"application/octet-stream": {
                        "schema": {"type": "string", "format": "binary"}}}},
                    "responses": {**created, **_errors(*UPLOAD_ERRORS)}},
        },
        "/{project}/{item}/latest": {
            "parameters": [PROJECT, ITEM],
            "get": {**READ, "summary": "redirect to the newest file of a collection",
                    "responses": {"302": {"description": "to the newest file"},
                                  **_errors(400, 401, 404)}},
            "delete": _remove_file(same_as_a_file),
        },
        "/{project}/{item}/rollback": {
            "parameters": [PROJECT, ITEM],
            "post": {"summary": "make a kept release live again",
                     "requestBody": {"required": False, "content": {"application/json": {
                         "schema": {"type": "object", "required": ["release"],
                                    "properties": {"release": {"type": "string"}}}}}},
                     "responses": {"200": _json(_ref("Item"), "the item after the rollback"),
                                   **_errors(*WRITE_ERRORS, 409, 415)}},
            "delete": _remove_file(same_as_a_file),
        },
        "/{project}/{item}/{filename}": {
            "parameters": [PROJECT, ITEM, _param("filename", filename)],
            "delete": _remove_file("remove one file from a collection"),
        },
    }


def document(script_root: str = "") -> dict[str, Any]:
    codes = (400, 401, 403, 404, 409, 411, 413, 415, 422, 507)
    return {
        "openapi": "3.1.0",
        "info": {"title": "artstore", "version": __version__,
                 "description": "Publish what CI builds; nginx serves it."},
        "servers": [{"url": script_root or "/"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
            "responses": {f"Problem{code}": {
                "description": "problem",
                "content": {"application/problem+json": {"schema": _ref("Problem")}},
            } for code in codes},
        },
    }
