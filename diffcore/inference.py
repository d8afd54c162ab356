"""Inference speed-ups for any diffcore model: precision, CPU threads, torch.compile, CUDA graphs, a condition cache.

None of this changes what is computed, only how: every lever has a switch, and the eager float32 path (every
switch off, :meth:`InferenceConfig.reference`) is the reference the benchmarks measure against. One object applies
them together::

    runner = InferenceRunner(model, device, InferenceConfig())   # defaults: every lever that is safe here
    with runner.context():                                       # inference_mode + autocast (+ threads)
        cond = runner.prepare_condition(mel)                     # the model's own precomputation, if it has one
        x0 = ddpm_sample(VPDenoiser(runner, ...), shape, ..., cond=cond, generator=g)   # any sampler

``InferenceRunner`` is itself a model (``runner(x_t, t, cond=None)``, an ``nn.Module`` whose parameters are the
wrapped model's), so the pure samplers take it unchanged and resolve device and dtype from it; the sampler's state
stays float32 while the network runs in the autocast precision.

Levers (``InferenceConfig`` fields):

| field              | what it does                                                                  | default |
| ------------------ | ----------------------------------------------------------------------------- | ------- |
| ``precision``      | autocast dtype of the network (:mod:`diffcore.precision`; bf16 has float32's range) | ``auto``: bf16 on a CUDA GPU with bf16 and on a CPU with native bf16, else fp32 |
| ``channels_last``  | the model's channels-last path, through its ``set_runtime(channels_last=...)`` | on      |
| ``compile``        | ``torch.compile`` (inductor; on CPU with weight freezing, needs a C compiler)  | off: compiling costs about a minute per input shape; turn it on for long jobs of fixed shapes |
| ``cuda_graphs``    | replay one CUDA graph per input shape instead of launching kernels one by one  | on (CUDA only; up to 4 shapes, then plain calls) |
| ``condition_cache``| the model's ``prepare_condition`` (work on ``cond`` done once per sampling run) | ``auto``: CPU only |
| ``threads``        | ``torch.set_num_threads`` inside ``context()``                                | unchanged |
| ``tune_allocator`` | **process-wide side effect**: glibc ``mallopt`` so that large CPU tensors are reused, not re-faulted from the OS | off (opt in) |

Optional model protocol (a model implements what it can; the runner uses what it finds):

- ``set_runtime(*, channels_last=None, gradient_checkpointing=None)``: switches how the network runs. The runner
  calls ``set_runtime(channels_last=config.channels_last)`` on the model it is given (which changes that model);
  a model without it runs as it is, and asking it for ``channels_last`` warns once.
- ``prepare_condition(cond) -> cond'``: work that depends on the conditioner alone (not on ``x_t`` or ``t``),
  done once per sampling run; ``cond'`` is then passed as ``cond`` to every call instead of ``cond``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Literal

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from diffcore.config import ConfigBase, ConfigError
from diffcore.precision import Precision, PrecisionChoice, autocast, resolve_precision

__all__ = [
    "InferenceConfig",
    "InferenceRunner",
    "CUDAGraphCallable",
    "inference_context",
    "has_c_compiler",
    "set_threads",
    "tune_cpu_allocator",
    "compile_for_inference",
]

@contextlib.contextmanager
def inference_context(
    device: torch.device | str, precision: Precision = "fp32", threads: int | None = None, cache_enabled: bool = True
) -> Iterator[None]:
    """``torch.inference_mode`` + autocast to ``precision`` (+ ``threads`` intra-op CPU threads, restored after)."""
    previous = set_threads(threads) if threads is not None else None
    try:
        with torch.inference_mode(), autocast(precision, device, cache_enabled):
            yield
    finally:
        if previous is not None:
            torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------------------------
# CPU settings


def set_threads(threads: int) -> int:
    """Set the intra-op thread count (one per physical core is fastest for convolutions); returns the old count."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_allocator_tuned = False


def tune_cpu_allocator(keep_bytes: int = 1 << 30) -> bool:
    """Make glibc's malloc keep and reuse large blocks instead of returning them to the OS after every free.

    By default a block above a dynamic threshold is mmap-ed fresh and unmapped on free, so each new activation
    tensor page-faults its memory in again; in a VM that costs as much as the arithmetic of the elementwise ops.
    This raises the mmap threshold to glibc's maximum (32 MiB: larger tensors are still mmap-ed) and keeps up to
    ``keep_bytes`` of freed memory. A side effect on the whole process (every later allocation of any library), so
    it is opt-in (``InferenceConfig.tune_allocator``); idempotent, and it cannot be undone. Returns False where glibc
    is not the allocator.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(
        mallopt(option, value) == 1
        for option, value in ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, keep_bytes), (_M_TOP_PAD, 64 << 20))
    )
    _allocator_tuned = ok
    return ok


def has_c_compiler() -> bool:
    """Whether inductor can build CPU kernels here (it needs a C++ compiler on PATH, or $CXX)."""
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


# --------------------------------------------------------------------------------------------------------------
# torch.compile


def compile_for_inference(
    model: Callable,
    device: torch.device | str,
    *,
    mode: Literal["default", "max-autotune-no-cudagraphs"] = "default",
    freeze: bool | None = None,
    dynamic: bool = False,
) -> Callable:
    """``torch.compile`` for inference: fixed shapes (``dynamic=False``: one specialised graph per input shape).

    ``freeze`` (default: on CPU) lets inductor treat the weights as constants, so oneDNN packs them once and fuses
    the element-wise epilogues into the convolutions; the compiled callable then ignores later weight updates and
    must be called under ``torch.inference_mode`` / ``torch.no_grad``. CUDA graphs are left to
    :class:`CUDAGraphCallable` (``mode`` never picks inductor's own).
    """
    device = torch.device(device)
    if freeze is None:
        freeze = device.type == "cpu"
    options: dict[str, Any] = {"freezing": bool(freeze)}
    if mode == "max-autotune-no-cudagraphs":
        options.update({"max_autotune": True, "triton.cudagraphs": False})
    elif mode != "default":
        raise ValueError(f"mode must be 'default' or 'max-autotune-no-cudagraphs', got {mode!r}")
    return torch.compile(model, dynamic=dynamic, options=options)


# --------------------------------------------------------------------------------------------------------------
# CUDA graphs


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    inputs: list[Any]  # the static input leaves
    output: Any
    sources: list[Any]  # per leaf: a weak reference to the tensor last copied in, or None


def _unchanged_source(ref: Any, new: Tensor) -> bool:
    """Whether ``new`` is the very tensor last copied into a static input (then the copy can be skipped)."""
    return ref is not None and ref() is new


class CUDAGraphCallable:
    """``fn(*args, **kwargs)`` replayed from a CUDA graph captured once per input signature.

    A signature is the structure of the arguments, every tensor's shape/dtype/stride/device, every other leaf's
    value, and the autocast and inference-mode state. On a new signature ``fn`` runs ``warmup`` times on a side
    stream (which also triggers torch.compile and cuDNN autotuning), then once under capture. Each call copies the
    arguments into the captured static inputs and replays; a tensor that is the very object copied in by the
    previous call is not copied again (a large conditioning cache passed at every step of a sampling run), so such
    an argument must not be modified in place between calls. Outputs are cloned unless ``clone_output=False`` (then
    they are overwritten by the next replay). Autocast must run with ``cache_enabled=False`` (:func:`diffcore.precision.autocast`).

    Calls that cannot be captured run ``fn`` directly: no CUDA tensor among the arguments, autograd recording, or
    ``max_graphs`` signatures captured already. ``fn`` must be free of host synchronisation and randomness.
    """

    def __init__(self, fn: Callable, *, warmup: int = 2, max_graphs: int = 4, clone_output: bool = True):
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 (the first calls compile and autotune), got {warmup}")
        self.fn = fn
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.clone_output = clone_output
        self._graphs: dict[Any, _Graph] = {}

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def _signature(self, leaves: list[Any], spec: Any) -> Any:
        parts = []
        for leaf in leaves:
            if isinstance(leaf, Tensor):
                parts.append((tuple(leaf.shape), leaf.dtype, leaf.stride(), str(leaf.device)))
            else:
                parts.append(leaf)
        amp = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        return spec, tuple(parts), amp, torch.is_inference_mode_enabled()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        tensors = [x for x in leaves if isinstance(x, Tensor)]
        capturable = (
            torch.cuda.is_available()
            and bool(tensors)
            and all(x.is_cuda for x in tensors)
            and not (torch.is_grad_enabled() and any(x.requires_grad for x in tensors))
        )
        if not capturable:
            return self.fn(*args, **kwargs)
        try:
            key = self._signature(leaves, spec)
            hash(key)
        except TypeError:  # an unhashable non-tensor argument
            return self.fn(*args, **kwargs)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return self.fn(*args, **kwargs)
            entry = self._capture(leaves, spec)
            self._graphs[key] = entry
        for i, (static, new) in enumerate(zip(entry.inputs, leaves)):
            if isinstance(new, Tensor) and not _unchanged_source(entry.sources[i], new):
                static.copy_(new)
                entry.sources[i] = weakref.ref(new)
        entry.graph.replay()
        if not self.clone_output:
            return entry.output
        return pytree.tree_map(lambda o: o.clone() if isinstance(o, Tensor) else o, entry.output)

    def _capture(self, leaves: list[Any], spec: Any) -> _Graph:
        static = [x.clone() if isinstance(x, Tensor) else x for x in leaves]
        args, kwargs = pytree.tree_unflatten(static, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.fn(*args, **kwargs)
        return _Graph(graph, static, output, [None] * len(static))


# --------------------------------------------------------------------------------------------------------------
# Everything together


@dataclass
class InferenceConfig(ConfigBase):
    """Which inference speed-ups to use (module docstring). All off (:meth:`reference`: ``precision="fp32"``,
    ``channels_last=False``, ``compile="off"``, ``cuda_graphs=False``, ``condition_cache="off"``) is the eager
    float32 reference path. ``tune_allocator`` changes the whole process's allocator and is off unless asked for."""

    precision: PrecisionChoice = "auto"
    channels_last: bool = True
    compile: Literal["on", "off"] = "off"
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    cuda_graphs: bool = True
    condition_cache: Literal["auto", "on", "off"] = "auto"
    threads: int | None = None
    tune_allocator: bool = False

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be null or at least 1, got {self.threads}")

    @classmethod
    def reference(cls) -> "InferenceConfig":
        """Every lever off: the eager float32 computation of the reference implementations."""
        return cls(precision="fp32", channels_last=False, compile="off", cuda_graphs=False, condition_cache="off",
                   tune_allocator=False)


_warned_no_runtime: set[str] = set()


def _set_channels_last(model: nn.Module, on: bool) -> bool:
    """Apply ``channels_last`` through the model's ``set_runtime``; returns whether the model now runs channels-last.
    A model without ``set_runtime`` is left as it is (a warning, once per model class, if ``on`` was asked for)."""
    set_runtime = getattr(model, "set_runtime", None)
    if callable(set_runtime):
        set_runtime(channels_last=on)
        return on
    name = type(model).__name__
    if on and name not in _warned_no_runtime:
        _warned_no_runtime.add(name)
        warnings.warn(f"InferenceConfig.channels_last: {name} has no set_runtime(channels_last=...); it runs as it is",
                      stacklevel=3)
    return False


class InferenceRunner(nn.Module):
    """A model run with the inference speed-ups of ``config``; ``runner(x_t, t, cond=None)`` keeps the contract.

    Construction moves the model to ``device``, switches it to eval mode and applies ``channels_last`` through its
    ``set_runtime`` (so the model it is given changes; module docstring). Call it and :meth:`prepare_condition`
    inside :meth:`context`. The resolved choices are in ``precision``, ``channels_last``, ``compiled``, ``graphs``
    and ``cache_condition`` (:meth:`describe`).
    """

    def __init__(self, model: nn.Module, device: torch.device | str, config: InferenceConfig | None = None):
        super().__init__()
        config = config if config is not None else InferenceConfig()
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.precision: Precision = resolve_precision(config.precision, self.device, purpose="inference")
        on_cpu = self.device.type == "cpu"
        self.channels_last = _set_channels_last(model, config.channels_last)
        self.compiled = config.compile == "on"
        if self.compiled and on_cpu and not has_c_compiler():
            self.compiled = False
        self.graphs = config.cuda_graphs and self.device.type == "cuda"
        cache = config.condition_cache
        self.cache_condition = callable(getattr(model, "prepare_condition", None)) and (
            cache == "on" or (cache == "auto" and on_cpu)
        )
        if config.tune_allocator and on_cpu:
            tune_cpu_allocator()
        fn: Callable = model
        if self.compiled:
            fn = compile_for_inference(model, self.device, mode=config.compile_mode)
        if self.graphs:
            fn = CUDAGraphCallable(fn)
        self._fn = (fn,)  # a tuple, so that a compiled module is not registered twice as a submodule

    def describe(self) -> dict[str, Any]:
        """The resolved choices, for logs and benchmark records."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compiled": self.compiled,
            "cuda_graphs": self.graphs,
            "condition_cache": self.cache_condition,
            "threads": torch.get_num_threads() if self.config.threads is None else self.config.threads,
        }

    def context(self) -> ContextManager:
        """inference_mode + autocast to the resolved precision (+ the configured thread count); with CUDA graphs the
        autocast weight-cast cache is off (see :func:`diffcore.precision.autocast`)."""
        return inference_context(self.device, self.precision, self.config.threads, cache_enabled=not self.graphs)

    def prepare_condition(self, cond: Any) -> Any:
        """``model.prepare_condition(cond)`` when the condition cache is on, else ``cond`` unchanged (the optional
        protocol of the module docstring)."""
        if cond is None or not self.cache_condition:
            return cond
        return self.model.prepare_condition(cond)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self._fn[0](x_t, t, cond=cond)
