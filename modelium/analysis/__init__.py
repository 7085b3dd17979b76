"""Model analysis: what a dropped folder contains and what serving it will cost.

Everything here works from files alone (headers and configs), so it runs on machines
without a GPU and never loads weights.
"""

from modelium.analysis.analyzer import analyze_folder
from modelium.analysis.memory import estimate_memory
from modelium.analysis.profile import InvalidModelError, MemoryEstimate, ModelProfile

__all__ = [
    "InvalidModelError",
    "MemoryEstimate",
    "ModelProfile",
    "analyze_folder",
    "estimate_memory",
]
