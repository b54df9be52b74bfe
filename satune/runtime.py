"""Where and how a trial computes: device, threads, seeds, RNG state, autocast.

The device comes from torch, never from Ray's GPU ids: a Ray node with a fake `num_gpus` sets
CUDA_VISIBLE_DEVICES while torch still sees no GPU.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from satune.errors import UserError
from satune.seeds import derive_seed
from satune.specs import RuntimeSpec


class DeviceUnavailable(UserError):
    """The spec asks for a device this node does not have."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("trial.runtime.device: 'cuda' but torch sees no CUDA device on this node")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceUnavailable("trial.runtime.device: 'mps' but torch sees no MPS device on this machine")
    return torch.device(name)


def configure(spec: RuntimeSpec, seed: int) -> torch.device:
    """Apply a trial's runtime settings once, at its start; returns the device."""
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    seed_global(seed)
    # Bit-identical CPU runs; on CUDA this also pins cuDNN to deterministic kernels.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return resolve_device(spec.device)


def generator(*parts: object) -> torch.Generator:
    """A CPU generator owned by one consumer (shuffling of epoch k, attack starts of epoch k, ...)."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Values drawn on the host (a CPU generator's, for runs that repeat on any device) onto `device`
    without a host sync: a copy from pageable memory waits for the GPU's queued work, one from pinned
    memory does not (torch keeps the pinned block until the copy has run)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def seed_global(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Global RNG states, as tensors and plain values (loadable with weights_only=True)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    state["numpy"] = _numpy_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    # A checkpoint loaded with map_location=cuda carries these tensors on the GPU; the setters
    # take CPU byte tensors only.
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _numpy_state():
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def amp_active(device: torch.device, enabled: bool) -> bool:
    """Whether `runtime.amp` takes effect here: bfloat16 needs a CUDA GPU that supports it."""
    return enabled and device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on GPUs that support it; elsewhere a no-op, so CPU runs stay exact.

    bfloat16 needs no loss scaling, which keeps one code path for every method.
    """
    if amp_active(device, enabled):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(spec: RuntimeSpec, device: torch.device, model: torch.nn.Module) -> bool:
    """NHWC on CUDA for convolutional models unless the spec says otherwise: cuDNN's convolutions
    (and tensor cores under bf16) run fastest in it. Off on CPU by default: CPU runs stay exact."""
    wanted = spec.channels_last if spec.channels_last is not None else device.type == "cuda"
    return wanted and any(p.dim() == 4 for p in model.parameters())


def cache_dir(spec: RuntimeSpec) -> Path:
    """Absolute cache root for rankings and embedded data (trials run in other directories)."""
    root = spec.cache_dir or os.environ.get("SATUNE_CACHE") or Path.home() / ".cache" / "satune"
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
