"""The error a handler raises to answer with a status and a one-line message.

Its own module because both sides need it: the handlers raise it and the app's exception handler turns
it into the response body, and neither should import the other for it.
"""

from __future__ import annotations


class ApiError(Exception):
    """An HTTP error with a one-line message (the body is ``{"message": ...}``, as Cohere's API)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
