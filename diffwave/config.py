"""Configuration of a DiffWave model: the network, its diffusion process, its inference noise schedule (the fast
sampling schedule) and its mel front end (everything inference needs, so a checkpoint's ``config["model"]`` rebuilds
the model). Keys that older versions wrote are mapped in one place, :attr:`DiffWaveConfig.RENAMED`.

Presets (Kong et al., "DiffWave: A Versatile Diffusion Model for Audio Synthesis", ICLR 2021, experiments; and
lmnt-com/diffwave's ``params.py``):

    preset          layers  C    cycle  T    β              inference β (T_infer = 6)     mel           parameters
    base            30      64   10     50   1e-4 … 0.05    1e-4 1e-3 1e-2 0.05 0.2 0.5   diffwave      2,619,971
    large           30      128  10     200  1e-4 … 0.02    1e-4 1e-3 1e-2 0.05 0.2 0.7   diffwave      6,885,315
    unconditional   36      256  12     200  1e-4 … 0.02    1e-4 1e-3 1e-2 0.05 0.2 0.7   none, 16 kHz  24,034,305
    tiny            10      32   5      50   1e-4 … 0.05    1e-4 1e-3 1e-2 0.05 0.2 0.5   diffwave      210,691

(``tiny``, for tests and the CPU quickstart, also shrinks the step-embedding MLP to 128 → 128.)
The paper reports 2.64M (base), 6.91M (large) and 24.1M (unconditional) parameters; the counts above, of this
network and of lmnt's identical one, are 0.8 %, 0.4 % and 0.3 % below (the paper's tally is not itemised).
The inference schedules (the paper's "user-defined variance schedule" {η_t} of fast sampling, Section 4 and
Appendix B; lmnt's ``inference_noise_schedule``) are the paper's for its vocoders (ending at 0.5 for base, T = 50; at 0.7 for large,
T = 200). For the unconditional preset we reuse the large one, a choice of ours: it trains with the same T = 200,
β 1e-4 … 0.02 schedule, to which every step of it aligns. All presets train with the L1 ε-loss, as lmnt's reference
does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np

from diffcore.config import ConfigBase, ConfigError, DiffusionConfig, bounded
from diffwave.mel import MelConfig
from diffwave.prior import PriorConfig

__all__ = ["DiffWaveConfig", "suggest_upsample_strides"]

_INFER_BASE = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]
_INFER_LARGE = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.7]
_T50 = {"schedule": "linear", "num_steps": 50, "beta_start": 1e-4, "beta_end": 0.05, "prediction": "eps", "loss": "l1"}
_T200 = {**_T50, "num_steps": 200, "beta_end": 0.02}
_MEL_22K = {"preset": "diffwave", "sample_rate": 22050}

_CONDITIONAL = {
    "residual_layers": 30,
    "residual_channels": 64,
    "dilation_cycle": 10,
    "conditional": True,
    "n_mels": 80,
    "upsample_strides": [16, 16],
    "embedding_dim": 128,
    "embedding_hidden": 512,
    "diffusion": _T50,
    "inference_betas": _INFER_BASE,
    "mel": _MEL_22K,
    "sample_rate": 22050,
    "audio_length": 22050,
}


def suggest_upsample_strides(hop_length: int, stages: int = 2) -> tuple[int, ...]:
    """Time strides for the conditioner upsampler whose product is ``hop_length``, as even as possible.

    Picks the divisor closest to hop^(1/stages) at each stage: 256 → (16, 16), 300 → (15, 20), 200 → (10, 20),
    275 → (11, 25); a prime hop gives one stage.
    """
    if hop_length < 1:
        raise ValueError(f"hop_length must be positive, got {hop_length}")
    strides: list[int] = []
    rest = hop_length
    for left in range(stages, 1, -1):
        target = rest ** (1.0 / left)
        divisors = [d for d in range(2, rest) if rest % d == 0]
        if not divisors:
            break
        d = min(divisors, key=lambda d: (abs(math.log(d / target)), d))
        strides.append(d)
        rest //= d
    strides.append(rest)
    return tuple(sorted(strides))


@dataclass
class DiffWaveConfig(ConfigBase):
    """Hyper-parameters of :class:`diffwave.model.DiffWave` and what inference needs besides weights.

    Network: ``residual_layers`` (N), ``residual_channels`` (C), ``dilation_cycle`` (layer i has dilation
    2^(i mod cycle)), ``conditional`` (mel-conditioned vocoder or unconditional generator), ``n_mels`` (must equal
    ``mel.n_mels``), ``upsample_strides`` (time strides of the 2-D transposed-conv conditioner upsampler; their
    product must equal ``mel.hop_length``), ``embedding_dim``/``embedding_hidden`` (step embedding 128 → 512 → 512).

    Inference: ``diffusion`` (training schedule, prediction target, loss), ``inference_betas`` (the user-defined
    variance schedule η of the paper's fast-sampling algorithm, ``steps="fast"``; every step must align with the
    training schedule; earlier versions called it ``fast_betas``, still read), ``mel`` (front end of the
    conditioner; ``None`` when unconditional), ``sample_rate``, ``audio_length`` (samples to generate unconditionally; also the default training crop), ``prior`` (PriorGrad's
    data-dependent prior N(0, diag(s²)) with s from each mel frame's energy, see :mod:`diffwave.prior`; ``None`` =
    N(0, I), DiffWave's and lmnt's).

    Defaults are the ``base`` preset, and a dict without ``preset`` starts from ``base`` too, so a partial nested
    section (``diffusion: {num_steps: 40}``) keeps the preset's other fields. ``DiffWaveConfig.preset("large",
    residual_layers=20)`` overrides fields of another preset.
    """

    # Upper bounds (``bounded``): from_dict and the constructor refuse a gigantic network before building it.
    residual_layers: int = bounded(30, limit=512)
    residual_channels: int = bounded(64, limit=4096)
    dilation_cycle: int = bounded(10, limit=512)
    conditional: bool = True
    n_mels: int = bounded(80, limit=1024)
    upsample_strides: tuple[int, ...] = (16, 16)
    embedding_dim: int = bounded(128, limit=4096)
    embedding_hidden: int = bounded(512, limit=16_384)
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig.from_dict(_T50))
    inference_betas: tuple[float, ...] = tuple(_INFER_BASE)
    mel: MelConfig | None = field(default_factory=lambda: MelConfig.from_dict(_MEL_22K))
    sample_rate: int = 22050
    audio_length: int = bounded(22050, limit=100_000_000)
    prior: PriorConfig | None = None

    #: Keys that earlier versions wrote → today's field (:meth:`ConfigBase.from_dict` maps them, with a
    #: ``DeprecationWarning``): old recipes, run folders, checkpoints and exports keep loading.
    RENAMED: ClassVar[dict[str, str]] = {"fast_betas": "inference_betas"}

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "base": _CONDITIONAL,
        "large": {**_CONDITIONAL, "residual_channels": 128, "diffusion": _T200, "inference_betas": _INFER_LARGE},
        "unconditional": {
            **_CONDITIONAL,
            "residual_layers": 36,
            "residual_channels": 256,
            "dilation_cycle": 12,
            "conditional": False,
            "diffusion": _T200,
            "inference_betas": _INFER_LARGE,
            "mel": None,
            "sample_rate": 16000,
            "audio_length": 16000,
        },
        "tiny": {
            **_CONDITIONAL,
            "residual_layers": 10,
            "residual_channels": 32,
            "dilation_cycle": 5,
            "embedding_hidden": 128,
        },
    }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, *, _where: str = "") -> "DiffWaveConfig":
        data = dict(data or {})
        data.setdefault("preset", "base")
        return super().from_dict(data, _where=_where)

    def __post_init__(self) -> None:
        for name in ("residual_layers", "residual_channels", "dilation_cycle", "sample_rate", "audio_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.embedding_dim < 4 or self.embedding_dim % 2:
            raise ConfigError(f"embedding_dim must be even and at least 4, got {self.embedding_dim}")
        if self.embedding_hidden < 1:
            raise ConfigError(f"embedding_hidden must be positive, got {self.embedding_hidden}")
        if self.diffusion.edm is not None:
            raise ConfigError("diffusion.edm: DiffWave trains and samples the VP parameterisation of its paper "
                              "(Algorithms 1 and 2, PriorGrad's prior); EDM's preconditioning is for diffimage. "
                              "Remove the edm section")
        self._check_conditioner()
        self._check_inference_betas()

    @property
    def hop_length(self) -> int | None:
        """Audio samples per mel frame (``None`` for an unconditional model)."""
        return self.mel.hop_length if self.mel is not None else None

    def _check_conditioner(self) -> None:
        if not self.conditional:
            if self.prior is not None:
                raise ConfigError("the energy prior reads the mel: an unconditional model takes none (prior: null)")
            if self.mel is not None:
                raise ConfigError("an unconditional model (conditional: false) takes no mel front end: set mel to null")
            return
        if self.mel is None:
            raise ConfigError("a conditional model needs a mel front end (mel: {preset: diffwave} or hifigan)")
        if self.n_mels != self.mel.n_mels:
            raise ConfigError(f"n_mels ({self.n_mels}) must equal mel.n_mels ({self.mel.n_mels})")
        if self.sample_rate != self.mel.sample_rate:
            raise ConfigError(f"sample_rate ({self.sample_rate}) must equal mel.sample_rate ({self.mel.sample_rate})")
        if not self.upsample_strides or any(s < 1 for s in self.upsample_strides):
            raise ConfigError(f"upsample_strides must be positive integers, got {list(self.upsample_strides)}")
        product = math.prod(self.upsample_strides)
        if product != self.mel.hop_length:
            hint = list(suggest_upsample_strides(self.mel.hop_length))
            raise ConfigError(
                f"upsample_strides {list(self.upsample_strides)} multiply to {product}, but mel.hop_length is "
                f"{self.mel.hop_length}: the upsampler must turn one mel frame into one hop of audio "
                f"(e.g. upsample_strides={hint})"
            )

    def _check_inference_betas(self) -> None:
        """Every fast-sampling step must align with the training schedule: ∏(1 − η) within [ᾱ_T, ᾱ_1]."""
        eta = np.asarray(self.inference_betas, dtype=np.float64)
        if eta.size == 0 or not np.all((eta > 0) & (eta < 1)):
            raise ConfigError(f"inference_betas must be a non-empty list of values in (0, 1), "
                              f"got {list(self.inference_betas)}")
        gamma_bar = np.cumprod(1.0 - eta)
        alpha_bar = self.diffusion.build().alphas_cumprod
        tol = 1e-12
        bad = [i for i, g in enumerate(gamma_bar) if not alpha_bar[-1] - tol <= g <= alpha_bar[0] + tol]
        if bad:
            raise ConfigError(
                f"inference_betas {list(self.inference_betas)} do not align with the training schedule: the cumulative product "
                f"of (1 - beta) must stay within [{alpha_bar[-1]:.4g}, {alpha_bar[0]:.6g}] "
                f"(alpha_bar of training steps T and 1), but step(s) {bad} give {[round(float(gamma_bar[i]), 4) for i in bad]}"
            )
