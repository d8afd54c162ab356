"""Vocoders trained by this project and shipped inside the package (no download).

Each is a folder here named after it, in the export layout: ``config.json`` (the resolved training recipe, plus
``provenance``: data, steps, minutes, hardware, held-out metrics), ``model.safetensors`` (EMA weights in float16,
loaded into float32) and ``MODEL_CARD.md``. ``diffwave.api.load(NAME)`` and ``diffwave vocode --model NAME`` take
the name; ``diffwave.api.available_models()`` lists them.
"""

from __future__ import annotations

from pathlib import Path

from diffcore.pretrained import ShippedModels

__all__ = ["SHIPPED", "available_models"]

SHIPPED = ShippedModels(Path(__file__).resolve().parent, "vocoder")


def available_models() -> list[str]:
    """Names of the shipped vocoders, sorted."""
    return SHIPPED.names()
