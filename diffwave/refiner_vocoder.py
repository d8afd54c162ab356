"""The Griffin-Lim refiner (:mod:`diffwave.refiner`) behind the same vocoding interface as a DiffWave.

:func:`diffwave.api.load` returns a :class:`RefinerVocoder` for an export or run whose stored config says
``"network": "refiner"`` (the shipped ``ljspeech-refiner``). It is a :class:`diffwave.api.Vocoder`: ``vocode`` (every
input shape, the argument checks), ``mel``, ``save`` and the evaluation functions are the same code, and
:func:`diffwave.sample.vocode_mels` runs the refiner's one deterministic pass. ``steps``, ``generator`` and ``seed``
are accepted for the common signature and have no effect (no noise is drawn: Griffin-Lim starts from zero phase,
and each mel is its own pass, so a mel's audio never depends on the other mels of a call, their order or the batch
size); ``generate`` is refused (the refiner needs a mel).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from diffcore.checkpoint import rebuild_model
from diffcore.device import resolve_device
from diffwave.api import Vocoder
from diffwave.refiner import NETWORK_NAME, GriffinLimRefiner, RefinerConfig

__all__ = ["RefinerVocoder", "is_refiner_config"]


def is_refiner_config(config: Mapping[str, Any]) -> bool:
    """Whether a stored config (an export's ``config.json`` or a run's recipe) describes a refiner."""
    return isinstance(config, Mapping) and config.get("network") == NETWORK_NAME


class RefinerVocoder(Vocoder):
    """A :class:`~diffwave.refiner.GriffinLimRefiner` in evaluation mode (``model``), with ``config``
    (:class:`RefinerConfig`), ``source`` and ``info`` (the stored config) as on every :class:`Vocoder`."""

    def __init__(self, model: GriffinLimRefiner, source: str = "<memory>", info: Mapping[str, Any] | None = None):
        super().__init__(model, source, info or {"network": NETWORK_NAME, "model": model.config.to_dict()})
        self.config: RefinerConfig = model.config  # type: ignore[assignment]

    @classmethod
    def from_config_and_weights(cls, config: Mapping[str, Any], weights: Mapping[str, Tensor],
                                device: str | torch.device = "auto", source: str = "<memory>") -> "RefinerVocoder":
        """Rebuild from a stored config (``{"network": "refiner", "model": ...}``) and a state dict with
        :func:`diffcore.checkpoint.rebuild_model` (the config parsed, the weights checked against it and for damage);
        raises ``CheckpointError`` naming ``source``."""
        model = rebuild_model(config, weights, RefinerConfig, GriffinLimRefiner, source=source, kind="refiner")
        return cls(model.to(resolve_device(device)), source, config)

    def __repr__(self) -> str:
        c = self.config
        params = sum(p.numel() for p in self.model.parameters())
        return (f"RefinerVocoder({self.source!r}: Griffin-Lim ({c.gl_iters} iterations) refined by "
                f"{c.num_blocks} ConvNeXt blocks x {c.dim}, {params / 1e6:.2f}M parameters, {c.mel.preset} mel, "
                f"hop {c.mel.hop_length}, {c.sample_rate} Hz, on {self.device})")

    def generate(self, *args: Any, **kwargs: Any) -> Tensor:
        raise ValueError("the refiner is a vocoder: it needs a mel (use vocode)")
