"""Import and export of lmnt-com/diffwave checkpoints.

lmnt's trainer writes ``torch.save({"step", "model", "optimizer", "params", "scaler"})`` where ``model`` is the state
dict of its ``DiffWave`` and ``params`` its hyper-parameters (``residual_layers``, ``residual_channels``,
``dilation_cycle_length``, ``noise_schedule`` (the β list), ``inference_noise_schedule``, ``n_mels``, ``n_fft``,
``hop_samples``, ``sample_rate``, ``unconditional``, ``audio_len`` …). Our :class:`~diffwave.model.DiffWave` keeps its
parameter names, so the weights load as they are; the hyper-parameters become a :class:`DiffWaveConfig`.

lmnt's network is ours with the upsampler fixed at two ×16 stages and a 128 → 512 step embedding; its mel is our
``diffwave`` preset with ``win_length = 4 · hop``.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from diffcore.checkpoint import expected_state, first_shape_mismatch, load_error_detail
from diffcore.config import ConfigError, DiffusionConfig
from diffwave.config import DiffWaveConfig
from diffwave.model import DiffWave, step_embedding_table

__all__ = [
    "LmntImportError",
    "load_lmnt_checkpoint",
    "read_lmnt_checkpoint",
    "config_from_lmnt_params",
    "lmnt_params",
    "lmnt_state_dict",
    "lmnt_checkpoint",
]

#: Hyper-parameters of lmnt's ``params.py`` that the network and inference depend on; absent ones take these values.
LMNT_DEFAULTS: dict[str, Any] = {
    "sample_rate": 22050,
    "n_mels": 80,
    "n_fft": 1024,
    "hop_samples": 256,
    "residual_layers": 30,
    "residual_channels": 64,
    "dilation_cycle_length": 10,
    "unconditional": False,
    "noise_schedule": np.linspace(1e-4, 0.05, 50).tolist(),
    "inference_noise_schedule": [0.0001, 0.001, 0.01, 0.05, 0.2, 0.5],
    "audio_len": 22050 * 5,
}

_EMBEDDING_KEY = "diffusion_embedding.embedding"


class LmntImportError(ValueError):
    """An lmnt checkpoint that cannot be read or mapped onto our model; the message names the file."""


class _AttrDictStandIn:
    """Stands in for lmnt's ``diffwave.params.AttrDict`` (a ``dict`` subclass) when unpickling: yields a plain mapping.

    Some lmnt versions saved ``params`` as that object rather than ``dict(params)``. ``torch.load(weights_only=True)``
    refuses any class it does not know, and an unrestricted unpickle would run whatever the file names (and would need
    lmnt's package installed). Instead we allow exactly one extra global, the name ``diffwave.params.AttrDict``, bound
    to this class, whose construction returns an empty ``OrderedDict`` (a type the weights-only unpickler already
    handles): the pickled items fill it through the unpickler's vetted dict operations, and nothing of lmnt's code
    runs. Any other unknown global still fails.
    """

    def __new__(cls, *args: Any) -> Any:  # the unpickler calls cls.__new__(cls); no instance of cls is ever made
        return OrderedDict()


def read_lmnt_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an lmnt checkpoint file with ``weights_only=True``; ``params`` comes back as a plain dict.

    A folder is read as lmnt's model directory (its ``weights.pt``).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "weights.pt"
    if not path.is_file():
        raise LmntImportError(f"{path}: no such lmnt checkpoint")
    from diffcore.torchfile import TorchFileError, check_torch_file

    try:
        check_torch_file(path)  # records that claim more than the file holds, before torch.load allocates them
    except (TorchFileError, OSError) as e:
        raise LmntImportError(str(e) if isinstance(e, TorchFileError) else f"{path}: unreadable ({e})") from None
    try:
        with torch.serialization.safe_globals([(_AttrDictStandIn, "diffwave.params.AttrDict")]):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a refused pickle, a truncated or foreign file: torch raises many kinds
        refused, detail = load_error_detail(e)
        if refused:
            raise LmntImportError(
                f"{path}: refused by the weights-only loader, which accepts tensors, plain containers and lmnt's "
                f"AttrDict only ({detail})"
            ) from None
        raise LmntImportError(f"{path}: cannot read as a torch checkpoint (corrupt or another format: {detail})") \
            from None
    if not isinstance(ckpt, Mapping) or "model" not in ckpt:
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise LmntImportError(f"{path}: not an lmnt checkpoint (expected a dict with 'model' and 'params'; got {keys})")
    ckpt = dict(ckpt)
    ckpt["params"] = _plain(ckpt.get("params") or {})
    return ckpt


def _plain(value: Any) -> Any:
    if isinstance(value, dict):  # dict.items: an unpickled mapping's own attributes cannot shadow it
        return {str(k): _plain(v) for k, v in dict.items(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _diffusion_from_betas(betas: list[float]) -> DiffusionConfig:
    """lmnt's ``noise_schedule`` as our diffusion config: linear when it is one, explicit β otherwise."""
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 1 or b.size < 2:
        raise ConfigError(f"noise_schedule must be a list of at least two betas, got {betas!r}")
    common = {"num_steps": int(b.size), "prediction": "eps", "loss": "l1"}
    if np.allclose(b, np.linspace(b[0], b[-1], b.size), rtol=1e-9, atol=1e-15):
        linear = {"schedule": "linear", "beta_start": float(b[0]), "beta_end": float(b[-1])}
        return DiffusionConfig.from_dict({**common, **linear})
    if "betas" in DiffusionConfig.field_names():
        return DiffusionConfig.from_dict({**common, "schedule": "betas", "betas": b.tolist()})
    raise ConfigError(
        "this checkpoint's noise_schedule is not linear, and DiffusionConfig cannot yet hold an explicit list of "
        "betas (schedule: betas); import is not possible until it can"
    )


def _check_param_types(p: Mapping[str, Any]) -> None:
    """Each lmnt hyper-parameter we read has the type lmnt gives it, and a schedule is a short list of numbers:
    a wrong type is a ``ConfigError`` naming the parameter (before any ``int()`` or allocation)."""
    from diffcore.config import MAX_SEQUENCE

    for key in ("hop_samples", "sample_rate", "n_mels", "n_fft", "residual_layers", "residual_channels",
                "dilation_cycle_length", "audio_len"):
        v = p.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v) or v < 1:
            raise ConfigError(f"params.{key} must be a positive integer, got {v!r}")
    if not isinstance(p.get("unconditional"), (bool, int)):
        raise ConfigError(f"params.unconditional must be true or false, got {p.get('unconditional')!r}")
    for key in ("noise_schedule", "inference_noise_schedule"):
        v = p.get(key)
        if not isinstance(v, (list, tuple)) and not (isinstance(v, (Tensor, np.ndarray)) and v.ndim == 1):
            raise ConfigError(f"params.{key} must be a list of betas, got {type(v).__name__}")
        if len(v) > MAX_SEQUENCE:
            raise ConfigError(f"params.{key} has {len(v)} betas, more than the limit {MAX_SEQUENCE}")
        if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and 0 < b < 1
                   for b in (v.tolist() if isinstance(v, (Tensor, np.ndarray)) else v)):
            raise ConfigError(f"params.{key} must hold betas in (0, 1)")


def config_from_lmnt_params(params: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> DiffWaveConfig:
    """The :class:`DiffWaveConfig` equivalent to lmnt hyper-parameters (missing keys take lmnt's defaults).

    ``overrides`` (nested field names → values) are applied on top, e.g. ``{"inference_betas": [...]}``.
    """
    if not isinstance(params, Mapping):
        raise ConfigError(f"params must be a mapping of hyper-parameters, got {type(params).__name__}")
    p = {**LMNT_DEFAULTS, **dict(params)}
    _check_param_types(p)
    conditional = not bool(p["unconditional"])
    hop, sr, n_mels = int(p["hop_samples"]), int(p["sample_rate"]), int(p["n_mels"])
    if conditional and hop != 256:
        raise ConfigError(
            f"hop_samples is {hop}, but lmnt's upsampler is hard-wired to 16 x 16 = 256 samples per frame, so this "
            "model cannot have been vocoding at that hop"
        )
    data: dict[str, Any] = {
        "residual_layers": int(p["residual_layers"]),
        "residual_channels": int(p["residual_channels"]),
        "dilation_cycle": int(p["dilation_cycle_length"]),
        "conditional": conditional,
        "n_mels": n_mels,
        "upsample_strides": [16, 16],
        "embedding_dim": 128,
        "embedding_hidden": 512,
        "diffusion": _diffusion_from_betas(list(p["noise_schedule"])).to_dict(),
        "inference_betas": [float(x) for x in p["inference_noise_schedule"]],
        "mel": (
            {
                "preset": "diffwave",
                "sample_rate": sr,
                "n_fft": int(p["n_fft"]),
                "hop_length": hop,
                "win_length": 4 * hop,
                "n_mels": n_mels,
            }
            if conditional
            else None
        ),
        "sample_rate": sr,
        "audio_length": int(p["audio_len"]),
    }
    return DiffWaveConfig.from_dict(_merge(data, overrides or {}))


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _model_state(state: Mapping[str, Any], num_steps: int, source: str) -> dict[str, Tensor]:
    """lmnt's state dict in our layout: strip a DataParallel ``module.`` prefix, drop the derived embedding table."""
    out = {}
    for key, value in state.items():
        out[key[len("module.") :] if key.startswith("module.") else key] = value
    table = out.pop(_EMBEDDING_KEY, None)
    if table is not None:  # early lmnt versions stored the sinusoidal table; it must be the one we rebuild
        ours = step_embedding_table(num_steps, 128)
        if table.shape != ours.shape or not torch.allclose(table.float(), ours, atol=1e-4):
            raise LmntImportError(f"{source}: its step-embedding table differs from DiffWave's sinusoidal one")
    return out


def load_lmnt_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> tuple[DiffWave, DiffWaveConfig]:
    """Load an lmnt-com/diffwave checkpoint (file, or model folder holding ``weights.pt``) as our model and config.

    The model is in evaluation mode and gives the same outputs as lmnt's for the same inputs (lmnt calls
    ``model(audio, spectrogram, t)``; ours is ``model(audio, t, spectrogram)``). ``overrides`` patch config fields.
    Raises :class:`LmntImportError` (naming the file) when the file or its parameters do not fit.
    """
    ckpt = read_lmnt_checkpoint(path, map_location)
    try:
        config = config_from_lmnt_params(ckpt["params"], overrides)
    except ConfigError as e:
        raise LmntImportError(f"{path}: its params do not describe a model we can build: {e}") from None
    if not isinstance(ckpt["model"], Mapping):
        raise LmntImportError(f"{path}: its 'model' entry is a {type(ckpt['model']).__name__}, not a state dict")
    state = _model_state(ckpt["model"], config.diffusion.num_steps, str(path))
    expected = expected_state(DiffWave, config)  # on the meta device: nothing of the model's size allocated yet
    mismatch = first_shape_mismatch(expected, state) if expected is not None else None
    if mismatch:
        raise LmntImportError(f"{path}: the weights do not fit the model its params describe ({mismatch})")
    if expected is not None:
        missing, unexpected = [k for k in expected if k not in state], [k for k in state if k not in expected]
    else:
        missing, unexpected = [], []
    if not (missing or unexpected):
        model = DiffWave(config)
        missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LmntImportError(
            f"{path}: the weights do not fit the model its params describe "
            f"(missing: {missing[:6]}{' …' if len(missing) > 6 else ''}; "
            f"unexpected: {unexpected[:6]}{' …' if len(unexpected) > 6 else ''})"
        )
    return model.to(map_location).eval(), config


def _check_lmnt_compatible(config: DiffWaveConfig) -> None:
    reasons = []
    if config.conditional and tuple(config.upsample_strides) != (16, 16):
        reasons.append(f"upsample_strides {list(config.upsample_strides)} (lmnt has [16, 16])")
    if (config.embedding_dim, config.embedding_hidden) != (128, 512):
        reasons.append(f"step embedding {config.embedding_dim} → {config.embedding_hidden} (lmnt has 128 → 512)")
    mel = config.mel
    if mel is not None and (
        mel.preset != "diffwave"
        or mel.win_length != 4 * mel.hop_length
        or mel.f_min != 20.0
        or mel.fmax_hz != mel.sample_rate / 2
    ):
        reasons.append("a mel front end other than lmnt's (diffwave preset, win_length = 4 · hop, 20 Hz to sr/2)")
    if config.diffusion.prediction != "eps":
        reasons.append(f"prediction {config.diffusion.prediction!r} (lmnt predicts eps)")
    if reasons:
        raise ValueError("lmnt's DiffWave cannot represent this model: " + "; ".join(reasons))


def lmnt_params(config: DiffWaveConfig) -> dict[str, Any]:
    """lmnt hyper-parameters (its ``params.py`` keys) for ``config``; raises ValueError if lmnt cannot express it."""
    _check_lmnt_compatible(config)
    betas = config.diffusion.build().betas
    mel = config.mel
    return {
        "batch_size": 16,
        "learning_rate": 2e-4,
        "max_grad_norm": None,
        "sample_rate": config.sample_rate,
        "n_mels": config.n_mels,
        "n_fft": mel.n_fft if mel is not None else LMNT_DEFAULTS["n_fft"],
        "hop_samples": mel.hop_length if mel is not None else math.prod(config.upsample_strides),
        "crop_mel_frames": 62,
        "residual_layers": config.residual_layers,
        "residual_channels": config.residual_channels,
        "dilation_cycle_length": config.dilation_cycle,
        "unconditional": not config.conditional,
        "noise_schedule": [float(b) for b in betas],
        "inference_noise_schedule": list(config.inference_betas),
        "audio_len": config.audio_length,
    }


def lmnt_state_dict(model: DiffWave) -> dict[str, Tensor]:
    """Our model's weights in lmnt's layout (the names are the same; tensors are detached CPU copies)."""
    _check_lmnt_compatible(model.config)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def lmnt_checkpoint(model: DiffWave, step: int = 0) -> dict[str, Any]:
    """A dict in lmnt's checkpoint layout (``step``, ``model``, ``params``) for ``torch.save``.

    lmnt's own ``inference.predict`` builds its model from its built-in ``params`` and ignores the saved ones, so
    there it only loads models with lmnt's default sizes; :func:`load_lmnt_checkpoint` reads any.
    """
    return {"step": int(step), "model": lmnt_state_dict(model), "params": lmnt_params(model.config)}
