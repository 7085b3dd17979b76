"""A thin HTTP client for the CLI commands that talk to a running daemon.

Every failure becomes one `GatewayError` with a message for humans, so each command can
print one line and exit 1 instead of a traceback.
"""

from __future__ import annotations

from typing import Any

import requests


class GatewayError(Exception):
    """The daemon answered with an error, or could not be reached; message is for humans.

    ``status`` is the HTTP status (None when the daemon could not be reached at all), so a
    caller can tell "the daemon is gone" from "the daemon said no".
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GatewayClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                *, timeout: float | None = None) -> Any:
        """The JSON answer of a 2xx; a `GatewayError` for anything else."""
        status, payload = self._send(method, path, body, timeout)
        if status >= 400:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            message = error.get("message", payload) if isinstance(error, dict) else error
            raise GatewayError(f"HTTP {status}: {message}", status)
        return payload

    def probe(self, path: str, *, timeout: float = 10.0) -> tuple[int, Any]:
        """(status, JSON) whatever the status: `/health` answers 503 with a useful body
        while a runtime is down, and `modelium status` wants to show it, not fail."""
        return self._send("GET", path, None, timeout)

    def _send(self, method: str, path: str, body: dict[str, Any] | None,
              timeout: float | None) -> tuple[int, Any]:
        try:
            response = requests.request(method, self.url + path, json=body, headers=self.headers,
                                        timeout=self.timeout if timeout is None else timeout)
        except requests.ConnectionError as exc:
            raise GatewayError(f"cannot reach modelium at {self.url} (is `modelium serve` running?)") from exc
        except requests.Timeout as exc:
            raise GatewayError(f"modelium at {self.url} did not answer in time") from exc
        except requests.RequestException as exc:
            raise GatewayError(f"request to modelium at {self.url} failed: {type(exc).__name__}") from exc
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": {"message": " ".join(response.text.split())[:500]}}
        return response.status_code, payload
