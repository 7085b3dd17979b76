"""vLLM runtime: one supervised vLLM OpenAI server process per model.

Modules, one job each: ``install`` (which interpreter has vLLM, what it serves),
``command`` (argv and environment, pure), ``memory`` (reservation and memory share,
pure), ``ports`` (a port per server), ``server`` (one supervised process) and
``manager`` (the RuntimeManager). Importing this package never imports vLLM: vLLM lives
in its own virtual environment and is only ever run as a child process.
"""

from modelium.runtimes.vllm.command import build_command, build_env
from modelium.runtimes.vllm.install import VllmInstall, probe, probe_with_reason, resolve_python
from modelium.runtimes.vllm.manager import VllmManager
from modelium.runtimes.vllm.memory import vllm_memory
from modelium.runtimes.vllm.ports import PortAllocator
from modelium.runtimes.vllm.server import VllmServer

__all__ = [
    "PortAllocator",
    "VllmInstall",
    "VllmManager",
    "VllmServer",
    "build_command",
    "build_env",
    "probe",
    "probe_with_reason",
    "resolve_python",
    "vllm_memory",
]
