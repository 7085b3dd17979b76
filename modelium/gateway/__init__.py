"""FastAPI gateway: transport only; all model state lives in the orchestrator."""

from modelium.gateway.app import create_app

__all__ = ["create_app"]
