"""Triton Inference Server runtime: an own supervised ``tritonserver`` (or a given
endpoint) in explicit model-control mode, driven over HTTP."""

from modelium.runtimes.triton.install import TritonInstall, locate_tritonserver
from modelium.runtimes.triton.manager import TritonManager

__all__ = ["TritonInstall", "TritonManager", "locate_tritonserver"]
