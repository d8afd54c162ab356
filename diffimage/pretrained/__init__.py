"""Image models trained by this project and shipped inside the package (no download).

Each model is a folder here named after it, an export folder like ``diffimage export`` writes: ``config.json``
(the resolved training recipe, plus ``provenance``: steps, minutes, hardware, measured FID), ``model.safetensors``
(the EMA weights, stored in float16 to keep the wheel small; loaded into float32) and ``MODEL_CARD.md`` (data,
licence, training, evaluation, how to reproduce). ``diffimage.api.load(NAME)`` and ``diffimage sample --model NAME``
take the name.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PRETRAINED_DIR", "available_models", "model_dir"]

PRETRAINED_DIR = Path(__file__).resolve().parent


def available_models() -> list[str]:
    """Names of the shipped models, sorted: the folders here that hold ``config.json`` and ``model.safetensors``."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir()
                  if p.is_dir() and (p / "config.json").is_file() and (p / "model.safetensors").is_file())


def model_dir(name: str) -> Path:
    """The folder of the shipped model ``name``; ``KeyError`` naming the shipped models for an unknown name."""
    if name in available_models():
        return PRETRAINED_DIR / name
    raise KeyError(f"no shipped image model named {name!r} (shipped: {', '.join(available_models()) or 'none'})")
