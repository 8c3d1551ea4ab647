"""TF Serving's error model: a TF status code plus message, mapped to gRPC codes and HTTP statuses."""

from __future__ import annotations

import grpc

# tensorflow.error.Code values (= gRPC code numbers) by name.
CODE_VALUES: dict[str, int] = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

# http_server.cc's ToHTTPStatusCode (note FAILED_PRECONDITION -> 400, not 412).
HTTP_STATUS: dict[str, int] = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
    "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}

GRPC_CODES: dict[str, grpc.StatusCode] = {c.name: c for c in grpc.StatusCode}


class ServingError(Exception):
    """A failed call, carrying the TF status code name so REST and gRPC report it the same way."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return GRPC_CODES.get(self.code, grpc.StatusCode.UNKNOWN)

    def __repr__(self) -> str:
        return f"ServingError({self.code}, {self.message!r})"


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def failed_precondition(message: str) -> ServingError:
    return ServingError("FAILED_PRECONDITION", message)


def from_tf_exception(exc: BaseException) -> ServingError:
    """Map a TensorFlow runtime error to its status code, as the C++ session would report it."""
    import tensorflow as tf

    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, tf.errors.OpError):
        code = _CODE_NAMES.get(int(exc.error_code), "UNKNOWN")
        return ServingError(code, exc.message)
    if isinstance(exc, (ValueError, TypeError)):
        return ServingError("INVALID_ARGUMENT", str(exc))
    return ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")


_CODE_NAMES = {value: name for name, value in CODE_VALUES.items()}
