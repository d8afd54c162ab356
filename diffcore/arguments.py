"""Checks of Python API arguments: one error type, messages that name the argument and what it got.

Torch reports ``sample(0)``, ``sample(2.0)`` or ``generator=0`` deep inside a sampler, and some bad values give no
error at all (``eta=nan`` draws NaN images, ``lengths=[True, True]`` reads as one frame each). The public methods of
both packages check their arguments with these functions first and raise :class:`ArgumentError`, which is a
``ValueError`` and a ``TypeError`` (so either ``except`` catches it) and a :class:`~diffcore.errors.ConfigError`
(so the commands print it as one ``error:`` line).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from diffcore.errors import ConfigError

__all__ = ["ArgumentError", "check_count", "check_real", "check_generator", "check_integer_array", "describe"]


class ArgumentError(ConfigError, TypeError):
    """An argument of a public function of the wrong type or value; the message names the argument."""


def describe(value: Any) -> str:
    """A short description of ``value`` for a message: ``True (a bool)``, ``2.0 (a float)``, ``'x' (a str)``."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    name = type(value).__name__
    return f"{text} ({'an' if name[:1] in 'aeiou' else 'a'} {name})"


def _is_integer(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_count(name: str, value: Any, lo: int = 1, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``; :class:`ArgumentError` for a bool, a float (even ``2.0``), a string,
    ``None`` or a value out of range."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        value = int(value)
    if not _is_integer(value):
        raise ArgumentError(f"{name} must be an integer, got {describe(value)}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        where = f"at least {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ArgumentError(f"{name} must be {where}, got {value}")
    return value


def check_real(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a finite float in ``[lo, hi]``; :class:`ArgumentError` for NaN, ±inf, a bool or a non-number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise ArgumentError(f"{name} must be a number, got {describe(value)}")
    value = float(value)
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = "" if lo is None and hi is None else f" in [{lo if lo is not None else '-inf'}, " \
                                                   f"{hi if hi is not None else 'inf'}]"
        raise ArgumentError(f"{name} must be a finite number{rng}, got {value}")
    return value


def check_generator(name: str, generator: Any, device: torch.device) -> torch.Generator | None:
    """``generator``: ``None`` or a ``torch.Generator`` on ``device`` (an int seed is not one: say how to make one)."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        hint = (f"; for a seed write torch.Generator(device={str(device)!r}).manual_seed({generator})"
                if _is_integer(generator) else "")
        raise ArgumentError(f"{name} must be a torch.Generator or None, got {describe(generator)}{hint}")
    if torch.device(generator.device).type != torch.device(device).type:
        raise ArgumentError(f"{name} lives on {generator.device}, but the model is on {device}: make it with "
                            f"torch.Generator(device={str(device)!r})")
    return generator


def check_integer_array(name: str, value: Any) -> torch.Tensor:
    """``value`` (a list, a numpy array or a tensor) as a 1-D int64 tensor; :class:`ArgumentError` for bools,
    floats, ``None`` entries, strings or another rank."""
    if isinstance(value, (str, bytes)) or value is None or isinstance(value, (bool, float)):
        raise ArgumentError(f"{name} must be a list of integers, got {describe(value)}")
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
    else:
        items = list(value) if isinstance(value, (list, tuple)) else None
        if items is not None:
            for i, v in enumerate(items):
                if isinstance(v, torch.Tensor) and v.ndim == 0:
                    v = v.item() if v.dtype != torch.bool else True
                if not _is_integer(v):
                    raise ArgumentError(f"{name}[{i}] must be an integer, got {describe(v)}")
        try:
            t = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError):
            raise ArgumentError(f"{name} must be a list of integers, got {describe(value)}") from None
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ArgumentError(f"{name} must hold integers, got dtype {t.dtype}")
    if t.ndim != 1:
        raise ArgumentError(f"{name} must be one-dimensional, got shape {tuple(t.shape)}")
    return t.long()
