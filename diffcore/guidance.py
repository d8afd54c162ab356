"""Classifier-free guidance (Ho & Salimans 2021) as a wrapper that keeps the model contract.

``guided(denoiser, scale, null_cond)`` returns the denoiser with its network wrapped; the combination of raw
outputs is the same for every parameterisation (eps, x_0, v and EDM's F are affine in the output at a fixed x_t
and t, with the same coefficients for both branches).

    eps_guided = eps_uncond + s (eps_cond - eps_uncond)

| symbol            | name here                                                                  |
| ----------------- | -------------------------------------------------------------------------- |
| s                 | ``scale``: 0 = unconditional, 1 = conditional, > 1 = guided (the paper's w is s - 1) |
| eps_cond          | ``model(x_t, t, cond)``                                                    |
| eps_uncond        | ``model(x_t, t, null)`` with ``null`` built from ``null_cond``             |
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import Tensor, nn

from diffcore.denoiser import EDMDenoiser, VPDenoiser, split_variance

__all__ = ["ClassifierFreeGuidance", "guided"]

D = TypeVar("D", VPDenoiser, EDMDenoiser)


class ClassifierFreeGuidance(nn.Module):
    """Wrap ``model(x_t, t, cond=None)`` so that it returns the guided prediction; itself a model.

    Args:
        model: the network, trained with condition dropout.
        scale: guidance scale s (see the module table). Any float; the combination is linear in s.
        null_cond: what the network was trained to see when the condition was dropped:

            - ``None``: the network is called with ``cond=None`` for the unconditional branch (two forward
              passes, since ``None`` cannot be concatenated with a real condition);
            - a number (e.g. the label index reserved for "no class") or a tensor broadcastable to one
              example's condition (e.g. a zero mel-spectrogram, or a learned null embedding): it is expanded to
              ``cond``'s shape and dtype, and both branches run in **one batched forward** over
              ``cat([x, x])`` with ``cat([cond, null])``.
        learned_variance: the output has 2x channels along dim 1 (eps, v) as for ``hybrid_loss``; only the eps
            half is guided, v is taken from the conditional branch (as GLIDE does).

    ``forward(x_t, t, cond=None)`` calls ``model(x_t, t, cond=None)`` unchanged. ``scale == 1`` returns the
    conditional output exactly and ``scale == 0`` the unconditional one, each with a single forward pass.
    """

    def __init__(
        self,
        model: Callable[..., Tensor],
        scale: float,
        null_cond: Tensor | int | float | None = None,
        learned_variance: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.scale = float(scale)
        if isinstance(null_cond, Tensor):
            self.register_buffer("null_cond", null_cond.detach().clone(), persistent=False)
        else:
            self.null_cond = null_cond
        self.learned_variance = learned_variance

    def _null_like(self, cond: Tensor) -> Tensor:
        null = self.null_cond
        if isinstance(null, Tensor):
            return null.to(device=cond.device, dtype=cond.dtype).expand_as(cond)
        return torch.full_like(cond, null)

    def _uncond(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.model(x_t, t, cond=None if self.null_cond is None else self._null_like(cond))

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Guided prediction shaped like the model output for ``x_t`` ``[B, ...]`` and steps ``t`` ``[B]``.

        ``cond=None`` passes straight through as ``model(x_t, t, cond=None)`` (nothing to guide).
        """
        if cond is None:
            return self.model(x_t, t, cond=None)
        if self.scale == 1.0:
            return self.model(x_t, t, cond=cond)
        if self.scale == 0.0:
            return self._uncond(x_t, t, cond)
        if self.null_cond is None:
            out_cond = self.model(x_t, t, cond=cond)
            out_uncond = self.model(x_t, t, cond=None)
        else:
            both = self.model(
                torch.cat([x_t, x_t]), torch.cat([t, t]), cond=torch.cat([cond, self._null_like(cond)])
            )
            out_cond, out_uncond = both.chunk(2, dim=0)
        if self.learned_variance:
            eps_c, v_c = split_variance(out_cond, True)
            eps_u, _ = split_variance(out_uncond, True)
            return torch.cat([eps_u + self.scale * (eps_c - eps_u), v_c], dim=1)
        return out_uncond + self.scale * (out_cond - out_uncond)


def guided(denoiser: D, scale: float, null_cond: Tensor | int | float | None = None) -> D:
    """``denoiser`` with its network wrapped in :class:`ClassifierFreeGuidance` (``learned_variance`` from the
    denoiser), so that every sampler sees the guided prediction."""
    cfg = ClassifierFreeGuidance(denoiser.network, scale, null_cond=null_cond,
                                 learned_variance=denoiser.learned_variance)
    return denoiser.with_network(cfg)
