"""A training step's memory without running its arithmetic: the system built on the meta device, every tensor counted.

`step_memory` runs one forward of the training loss and its backward on meta tensors (shapes and dtypes, no data)
under `LiveTensors`, a dispatch mode that adds up the bytes of every storage an operation creates and subtracts them
when the storage is freed: its high-water mark is the peak of the live tensors of forward and backward (activations,
the backward's transients and the gradients), i.e. what torch.cuda.max_memory_allocated adds to the weights, less the
convolution library's internal workspaces (module docstring of scripts/bench.py, suite ``presets``). The same code on
real tensors gives the same bytes (tests/scripts/test_memory_estimate.py).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MB = 2**20


class LiveTensors(TorchDispatchMode):
    """Bytes of the storages created by operations inside the mode that are still alive (``now``), and their maximum.

    An operation's output is either a view of (or written into) one of its inputs, or a new storage: only new ones count.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}  # storage id -> bytes
        self.now = self.peak = 0

    def _freed(self, key: int) -> None:
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in inputs:
                    self.live[key] = storage.nbytes()
                    self.now += self.live[key]
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._freed, key)
        return out


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each storage once)."""
    storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in [*module.parameters(), *module.buffers()]}
    return sum(storages.values())


def step_memory(system: torch.nn.Module, trained: torch.nn.Module, loss: Callable[[], torch.Tensor]) -> dict:
    """Memory of a training step of ``trained`` inside ``system`` (which also holds its EMA and any frozen model), MB.

    ``loss()`` computes the scalar training loss. Adam keeps two moments per trained parameter; the fused optimizer
    step, clipping and the in-place EMA update add no tensor of that size, so the step's peak is the weights, the
    moments and the peak of forward and backward. ``saved_for_backward``: the activations autograd holds at the end of
    the forward pass (saved_tensors_hooks, each storage once), the bulk of ``forward_end``.
    """
    packed: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        packed.setdefault(tensor.untyped_storage()._cdata, tensor)
        return tensor

    live = LiveTensors()
    with live:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            value = loss()
        forward_end = live.now
        saved = sum(n for key, n in live.live.items() if key in packed)
        packed.clear()
        value.backward()
    parameters = sum(p.nbytes for p in trained.parameters() if p.requires_grad)
    weights = module_bytes(system)
    above_weights = live.peak + 2 * parameters  # the forward/backward peak (gradients included) and Adam's moments
    return {
        "trained_parameters_mb": parameters / MB,
        "gradients_mb": parameters / MB,
        "adam_moments_mb": 2 * parameters / MB,
        "ema_mb": module_bytes(system.ema) / MB,
        "other_weights_mb": (weights - module_bytes(trained) - module_bytes(system.ema)) / MB,
        "saved_for_backward_mb": saved / MB,
        "forward_end_mb": forward_end / MB,
        "forward_backward_peak_mb": live.peak / MB,
        "peak_above_weights_mb": above_weights / MB,
        "total_mb": (weights + above_weights) / MB,
    }
