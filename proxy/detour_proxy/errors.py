"""Errors that Detour itself returns to clients, always in the OpenAI error format.

SDKs key their exception classes on the HTTP status and read `error.message`/`type`/`code`,
so every client-visible failure goes through `error_body` with an accurate status. Nothing
here ever formats a provider key: callers pass only messages they built themselves.
"""

from __future__ import annotations

import orjson

JSON_HEADERS = [(b"content-type", b"application/json")]


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


class ClientError(Exception):
    """A request Detour refuses before routing: bad JSON, missing fields, unknown model, too large."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ClientError:
    return ClientError(400, message, "invalid_request_error", code, param)


def unauthorized() -> ClientError:
    return ClientError(401, "Missing or invalid API key for this Detour gateway. Send 'Authorization: Bearer <key>'.",
                       "invalid_request_error", "invalid_api_key")


ECHO_MAX = 200   # characters of client-supplied text quoted back in an error message


def echo(text: str) -> str:
    """Client-supplied text as quoted in an error: cut to ECHO_MAX characters, so an error is
    never as large as the request that caused it."""
    return text if len(text) <= ECHO_MAX else text[:ECHO_MAX] + f"... ({len(text)} characters)"


def model_not_found(model: str, conditional_routes: list[str] | None = None) -> ClientError:
    """404 for a model no route serves; `conditional_routes` are the routes that serve the model
    only for requests with certain headers or metadata (named so the caller knows why)."""
    model = echo(model)
    if conditional_routes:
        names = ", ".join(f"'{n}'" for n in conditional_routes)
        return ClientError(404, f"No route serves the model '{model}' for this request: route(s) {names} serve it "
                           "only to requests with the headers or metadata they match on.",
                           "invalid_request_error", "model_not_found", "model")
    return ClientError(404, f"The model '{model}' is not served by any route of this gateway.",
                       "invalid_request_error", "model_not_found", "model")


def too_large(limit: int) -> ClientError:
    return ClientError(413, f"Request body exceeds the limit of {limit} bytes.", "invalid_request_error",
                       "request_too_large")


def not_ready() -> ClientError:
    return ClientError(503, "The gateway has no routing config yet.", "service_unavailable", "not_ready")
