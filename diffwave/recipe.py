"""A DiffWave training recipe: ``model`` (:class:`~diffwave.config.DiffWaveConfig`) + ``data`` (:class:`DataConfig`) +
``train`` (:class:`~diffcore.train.TrainConfig`), read from YAML by :func:`load_diffwave_recipe`.

The ``data`` section says where the recordings are (``data.path``: a folder, a file list, an LJSpeech, FSDD or
Speech Commands folder) and how they are cut; :func:`diffwave.data.split_files` turns it into the training clips and the held-out
clips (``data.holdout`` of them, evenly spread over the sorted list, never trained on; ``diffwave evaluate`` uses
them by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from diffcore.config import ConfigBase, ConfigError, load_recipe
from diffcore.split import HoldoutScheme
from diffcore.split import holdout_indices as _holdout_indices
from diffcore.train import TrainConfig
from diffwave.config import DiffWaveConfig

__all__ = ["DataConfig", "LossConfig", "DiffWaveRecipe", "load_diffwave_recipe", "holdout_indices"]

Layout = Literal["auto", "files", "ljspeech", "fsdd", "sc09"]


@dataclass
class DataConfig(ConfigBase):
    """Where the training audio is and how it is cut.

    ``path``: a folder of audio files (searched recursively), one audio file, a file list (one path per line; LJSpeech's
    ``id|text`` lines work), an LJSpeech folder (``wavs/`` + ``metadata.csv``), an FSDD folder (``recordings/``) or
    a Speech Commands folder (its SC09 digits). ``None`` in a recipe means "give it on the command line"
    (``data.path=DIR`` or ``--data DIR``). ``layout``: how to read ``path`` (``auto`` detects it). ``split``: the
    part of FSDD (``train``/``test``/``all``) or SC09 (``train``/``valid``/``test``/``all``) to use.
    ``holdout``: clips kept out of training, evenly spread over the sorted list. ``holdout_scheme``: which of
    :mod:`diffcore.split`'s versioned formulas picks them; a config without the field (run folders and shipped
    models from before it) means ``diffwave-v1``, the formula they were split with; new recipes say ``strata-v1``.

    Vocoder crops: ``crop_frames`` mel frames per example (the paper: 62), ``pad_short`` zero-pads shorter clips
    (otherwise they are dropped, with a count), ``cache_dir`` reads/writes cached mels (``diffwave preprocess``).
    Unconditional clips are ``model.audio_length`` samples at ``model.sample_rate``. ``strict`` refuses files at
    another sample rate instead of resampling them. ``repeat``: every clip appears that many times per epoch (an
    epoch must hold at least one batch; tiny sets are repeated automatically to reach one).
    """

    path: str | None = None
    layout: Layout = "auto"
    split: Literal["train", "valid", "test", "all"] = "train"
    holdout: int = 0
    holdout_scheme: HoldoutScheme = "diffwave-v1"
    crop_frames: int = 62
    pad_short: bool = True
    cache_dir: str | None = None
    strict: bool = False
    repeat: int = 1

    def __post_init__(self) -> None:
        if self.holdout < 0:
            raise ConfigError(f"data.holdout must not be negative, got {self.holdout}")
        if self.crop_frames < 1:
            raise ConfigError(f"data.crop_frames must be at least 1, got {self.crop_frames}")
        if self.repeat < 1:
            raise ConfigError(f"data.repeat must be at least 1, got {self.repeat}")
        if self.layout == "fsdd" and self.split == "valid":
            raise ConfigError("FSDD has no 'valid' split (use train, test or all; data.holdout keeps clips aside)")


@dataclass
class LossConfig(ConfigBase):
    """Training-only terms added to the diffusion loss (inference never reads them).

    ``stft_weight``: weight of a multi-resolution STFT loss (spectral convergence + log-magnitude L1, Yamamoto et al.
    2020) between the clean crop x_0 and the network's estimate x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, as FreGrad and
    WaveFM add it (weight about 0.1); 0 turns it off. ``stft_sizes``: the FFT sizes (hop = size/4, Hann window of
    the FFT size); sizes longer than the crop are skipped.
    """

    stft_weight: float = 0.0
    stft_sizes: tuple[int, ...] = (256, 512, 1024)

    def __post_init__(self) -> None:
        if not 0.0 <= self.stft_weight <= 100.0:
            raise ConfigError(f"loss.stft_weight must lie in [0, 100], got {self.stft_weight}")
        if not self.stft_sizes or any(not 16 <= n <= 16384 for n in self.stft_sizes):
            raise ConfigError(f"loss.stft_sizes must be FFT sizes in [16, 16384], got {list(self.stft_sizes)}")


@dataclass
class DiffWaveRecipe(ConfigBase):
    """Everything a DiffWave run needs: the model (what inference rebuilds), the data, the training settings and
    the training-only loss terms."""

    model: DiffWaveConfig = field(default_factory=DiffWaveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)


def load_diffwave_recipe(
    path: str | os.PathLike | None, overrides: Sequence[str] = (), data: str | os.PathLike | None = None
) -> DiffWaveRecipe:
    """Read a recipe file (or the defaults when ``path`` is ``None``) with ``key=value`` overrides.

    ``data`` is the ``--data DIR`` shortcut: it sets ``data.path`` (made absolute) before the overrides apply.
    """
    extra = [f"data.path={Path(data).expanduser().resolve()}"] if data is not None else []
    if _names_network(path, overrides) == "refiner":
        from diffwave.refiner_task import RefinerRecipe

        return load_recipe(RefinerRecipe, path, [*extra, *overrides])
    return load_recipe(DiffWaveRecipe, path, [*extra, *overrides])


def _names_network(path: str | os.PathLike | None, overrides: Sequence[str]) -> str | None:
    """The recipe's top-level ``network`` (an override ``network=...`` wins), or ``None`` when it names none (a
    DiffWave recipe). The file is composed, not constructed: aliases stay references, so nothing expands, and a
    file that cannot be read or parsed is left to :func:`diffcore.config.load_recipe` to report."""
    for item in reversed(list(overrides)):
        key, _, value = item.lstrip("-").partition("=")
        if key == "network":
            return value.strip()
    if path is None:
        return None
    import yaml

    from diffcore.config import MAX_RECIPE_BYTES

    try:
        p = Path(path)
        if not p.is_file() or p.stat().st_size > MAX_RECIPE_BYTES:
            return None
        node = yaml.compose(p.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "network" and isinstance(value, yaml.ScalarNode):
                return value.value
    return None


def holdout_indices(n: int, k: int, scheme: HoldoutScheme = "diffwave-v1") -> list[int]:
    """The ``k`` held-out clip indices of ``range(n)``: :func:`diffcore.split.holdout_indices` with ``scheme``
    (default: ``diffwave-v1``, the scheme of a data config that names none)."""
    return _holdout_indices(n, k, scheme, item="clip")

