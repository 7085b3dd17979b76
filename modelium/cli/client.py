"""A thin HTTP client for the CLI commands that talk to a running daemon."""

from __future__ import annotations

from typing import Any

import requests


class GatewayError(Exception):
    """The daemon answered with an error, or could not be reached; message is for humans."""


class GatewayClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = requests.request(method, self.url + path, json=body,
                                        headers=self.headers, timeout=self.timeout)
        except requests.ConnectionError as exc:
            raise GatewayError(f"cannot reach modelium at {self.url} (is `modelium serve` running?)") from exc
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": {"message": response.text}}
        if response.status_code >= 400:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise GatewayError(f"HTTP {response.status_code}: {error.get('message', payload)}")
        return payload
