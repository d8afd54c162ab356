"""Which examples a run holds out from training: ``holdout_indices(n, k, scheme)``, one function for every package.

A held-out set must never change under a run: resuming a run folder, evaluating a shipped model or comparing two
runs all rebuild it from the stored ``data`` section. So each formula is a named, versioned *scheme*; a new formula
gets a new name and the old ones stay, and a data config names the scheme it was split with.

| scheme           | index ``i`` of ``k`` (``0 <= i < k``) held out of ``n``                        | used by                  |
| ---------------- | ------------------------------------------------------------------------------ | ------------------------ |
| ``strata-v1``    | ``floor((2i + 1) n / 2k)``: the middle example of each of ``k`` equal strata    | new recipes              |
|                  | (exact integer arithmetic)                                                      |                          |
| ``diffwave-v1``  | ``round(linspace(0, n - 1, k + 2))[1:-1]``, rounding collisions filled from 0   | diffwave runs before the scheme field (``ljspeech-tiny``) |
| ``diffimage-v1`` | ``int((i + 0.5) n / k)`` in float64                                             | diffimage runs before the scheme field (``mnist-small``) |

Every scheme gives ``k`` distinct sorted indices in ``range(n)``, spread over the whole range so that data sorted
by class or file name gives a representative held-out set, and depends on ``(n, k)`` alone (no random state).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from diffcore.errors import ConfigError

__all__ = ["HoldoutScheme", "HOLDOUT_SCHEMES", "UNIFIED_SCHEME", "holdout_indices"]

HoldoutScheme = Literal["strata-v1", "diffwave-v1", "diffimage-v1"]
HOLDOUT_SCHEMES: tuple[str, ...] = get_args(HoldoutScheme)
#: The scheme of new recipes.
UNIFIED_SCHEME: HoldoutScheme = "strata-v1"


def _strata_v1(n: int, k: int) -> list[int]:
    return [(2 * i + 1) * n // (2 * k) for i in range(k)]


def _diffwave_v1(n: int, k: int) -> list[int]:
    # Neither the first nor the last item when there are enough; kept bit for bit (float64 linspace + round).
    picks = np.round(np.linspace(0, n - 1, k + 2)[1:-1]).astype(int)
    out = sorted(set(int(i) for i in picks))
    i = 0
    while len(out) < k:  # rounding collisions on very small sets
        if i not in out:
            out.append(i)
        i += 1
    return sorted(out)


def _diffimage_v1(n: int, k: int) -> list[int]:
    return [int((i + 0.5) * n / k) for i in range(k)]


_SCHEMES = {"strata-v1": _strata_v1, "diffwave-v1": _diffwave_v1, "diffimage-v1": _diffimage_v1}


def holdout_indices(n: int, k: int, scheme: HoldoutScheme = UNIFIED_SCHEME, *, item: str = "example") -> list[int]:
    """The ``k`` sorted indices of ``range(n)`` that ``scheme`` holds out (module docstring); ``[]`` for ``k <= 0``.

    Raises :class:`~diffcore.errors.ConfigError` when ``k >= n`` (no ``item`` would be left to train on) or the
    scheme is unknown.
    """
    if scheme not in _SCHEMES:
        raise ConfigError(f"unknown data.holdout_scheme {scheme!r} (valid: {', '.join(HOLDOUT_SCHEMES)})")
    if k <= 0:
        return []
    if k >= n:
        raise ConfigError(f"data.holdout={k} leaves no training {item} out of {n}")
    return _SCHEMES[scheme](n, k)
