"""Image models trained by this project and shipped inside the package (no download).

Each model is a folder here named after it, an export folder like ``diffimage export`` writes: ``config.json``
(the resolved training recipe, plus ``provenance``: steps, minutes, hardware, measured FID), ``model.safetensors``
(the EMA weights, stored in float16 to keep the wheel small; loaded into float32) and ``MODEL_CARD.md`` (data,
licence, training, evaluation, how to reproduce). ``diffimage.api.load(NAME)`` and ``diffimage sample --model NAME``
take the name. The registry is diffcore's (:class:`diffcore.pretrained.ShippedModels`), as for the vocoders.
"""

from __future__ import annotations

from pathlib import Path

from diffcore.pretrained import ShippedModels

__all__ = ["PRETRAINED_DIR", "SHIPPED", "available_models", "model_dir"]

PRETRAINED_DIR = Path(__file__).resolve().parent
SHIPPED = ShippedModels(PRETRAINED_DIR, "image model")


def available_models() -> list[str]:
    """Names of the shipped models, sorted: the folders here that hold ``config.json`` and ``model.safetensors``."""
    return SHIPPED.names()


def model_dir(name: str) -> Path:
    """The folder of the shipped model ``name``; ``KeyError`` naming the shipped models for an unknown name."""
    return SHIPPED.folder_of(name)
