"""Typed, validated settings from ``modelium.yaml`` plus ``MODELIUM_*`` environment overrides.

Importing this package reads nothing; call :func:`load_settings`.
"""

from .loader import (
    CONFIG_ENV_VAR,
    ENV_PREFIX,
    ConfigError,
    default_settings_yaml,
    load_settings,
    settings_from_dict,
)
from .settings import (
    DiscoverySettings,
    GatewaySettings,
    GpuSpec,
    MetricsSettings,
    ModeliumSettings,
    ModelOverride,
    OrchestrationSettings,
    RaySettings,
    TritonSettings,
    VllmModelOverride,
    VllmModelSettings,
    VllmSettings,
)

__all__ = [
    "CONFIG_ENV_VAR",
    "ENV_PREFIX",
    "ConfigError",
    "DiscoverySettings",
    "GatewaySettings",
    "GpuSpec",
    "MetricsSettings",
    "ModelOverride",
    "ModeliumSettings",
    "OrchestrationSettings",
    "RaySettings",
    "TritonSettings",
    "VllmModelOverride",
    "VllmModelSettings",
    "VllmSettings",
    "default_settings_yaml",
    "load_settings",
    "settings_from_dict",
]
