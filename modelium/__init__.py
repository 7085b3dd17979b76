"""Modelium: a drop-folder model orchestrator."""

__version__ = "0.1.0"
