"""Mel-consistent sampling: GLA-Grad's Griffin-Lim projection as a projection of DiffWave's clean estimate.

GLA-Grad (Liu et al., ICASSP 2024, arXiv 2402.15516) corrects the reverse process of a diffusion vocoder during its
first steps with a few fast Griffin-Lim iterations toward the magnitude the mel asks for. Here it is a projection in
the sense of :mod:`diffcore.samplers` (``project(x0_hat, i)``), so the core stays modality-agnostic:

    S      = max(0, pinv(H) M)                  the mel's STFT magnitude (:func:`diffwave.metrics.magnitude_from_mel`)
    x0_hat ← FGLA_n(S, phase of STFT(x0_hat))   at reverse steps i < ``steps`` (and the last, if asked)
    x_{t-1} = mu~_t(x0_hat, x_t) + sigma_t s z  the sampler's update, from the projected estimate

with FGLA_n the fast Griffin-Lim of Perraudin et al. 2013 (momentum ``momentum``), started from the current
estimate's phase instead of zero phase. The paper applies the iterations to the posterior mean x_{t-1} before the
noise is added; projecting x0_hat instead feeds the same consistent spectrogram into that mean with the weight the
schedule gives x_0 (mu~ = c1 x0_hat + c2 x_t), and at the last step (where mu~ = x0_hat) it is GLA-Grad's optional
final projection exactly. STFT frames past the mel's (the ``diffwave`` preset's trailing centred frame of an output
of ``F · hop`` samples) keep their own magnitude; the ``hifigan`` preset's frames are centred ``hop / 2`` later,
which the projection follows (as :func:`diffwave.metrics.griffin_lim_from_mel` does).

| symbol (GLA-Grad)              | name here                                                  |
| ------------------------------ | ---------------------------------------------------------- |
| K (projected early steps)      | ``GLAGrad.steps``                                          |
| n (Griffin-Lim iterations)     | ``GLAGrad.iterations``                                     |
| alpha (fast GL momentum)       | ``GLAGrad.momentum``                                       |
| final projection               | ``GLAGrad.final_iterations`` (0 = none)                    |
| pinv(H) M                      | :func:`diffwave.metrics.magnitude_from_mel`                 |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

from diffcore.config import ConfigError
from diffwave.mel import MelConfig
from diffwave.metrics import magnitude_from_mel

__all__ = ["GLAGrad", "ProjectOption", "resolve_projection", "griffin_lim_toward", "MelProjection"]


@dataclass(frozen=True)
class GLAGrad:
    """GLA-Grad's projection (module docstring): ``iterations`` fast Griffin-Lim iterations on x0_hat at the first
    ``steps`` reverse steps, and ``final_iterations`` at the last step (0 = no final projection). The defaults are
    the paper's setting as measured in issue 17 (3 steps, 32 iterations, momentum 0.99)."""

    steps: int = 3
    iterations: int = 32
    momentum: float = 0.99
    final_iterations: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "iterations", "final_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"GLAGrad.{name} must be a non-negative integer, got {value!r}")
        if self.final_iterations == 0 and (self.steps == 0 or self.iterations == 0):
            raise ConfigError("GLAGrad projects nothing with these fields: give steps and iterations > 0, or "
                              "final_iterations > 0")
        if not 0.0 <= float(self.momentum) < 1.0:
            raise ConfigError(f"GLAGrad.momentum must lie in [0, 1), got {self.momentum!r}")

    def iterations_at(self, i: int, num_steps: int) -> int:
        """Griffin-Lim iterations at reverse step ``i`` of ``num_steps`` (0 where nothing is projected; the last
        step takes the larger of the two counts when the early steps reach it)."""
        n = self.iterations if i < self.steps else 0
        return max(n, self.final_iterations) if i == num_steps - 1 else n


#: ``project=`` of :func:`diffwave.sample.vocode_mels`: ``None`` (off, the default), ``"gla"`` (``GLAGrad()``) or a
#: :class:`GLAGrad`.
ProjectOption = GLAGrad | Literal["gla"] | None


def resolve_projection(project: object) -> GLAGrad | None:
    """``project=`` as a :class:`GLAGrad` or ``None``; anything else is a ``ValueError`` naming the choices."""
    if project is None or isinstance(project, GLAGrad):
        return project
    if project == "gla":
        return GLAGrad()
    raise ValueError(f"project must be None, 'gla' or a diffwave.projection.GLAGrad, got {project!r}")


def griffin_lim_toward(wave: Tensor, magnitude: Tensor, mel_config: MelConfig, n_iter: int,
                       momentum: float = 0.99) -> Tensor:
    """``n_iter`` fast Griffin-Lim iterations (Perraudin et al. 2013, torchaudio's update) toward ``magnitude``
    ``[n_fft // 2 + 1, F]``, started from the phase of ``wave`` ``[T]``; returns ``[T]`` in ``wave``'s dtype.

    STFT: the preset's FFT size, hop and periodic Hann window, centred frames with reflect padding (``hifigan``:
    from sample ``hop // 2`` on, where its frames are centred; the first ``hop // 2`` samples are kept). Frames past
    ``F`` keep the magnitude they have. A wave too short to frame (under ``n_fft`` samples) is returned unchanged.
    """
    c = mel_config
    lead = c.hop_length // 2 if c.preset == "hifigan" else 0
    y = wave[lead:]
    if y.numel() < c.n_fft or n_iter < 1:
        return wave
    dtype = torch.float64 if wave.dtype == torch.float64 else torch.float32
    y = y.to(dtype)
    window = torch.hann_window(c.win_length, periodic=True, dtype=dtype, device=wave.device)

    def stft(v: Tensor) -> Tensor:
        return torch.stft(v, c.n_fft, c.hop_length, c.win_length, window=window, center=True, pad_mode="reflect",
                          return_complex=True)

    def istft(z: Tensor) -> Tensor:
        return torch.istft(z, c.n_fft, c.hop_length, c.win_length, window=window, length=y.numel())

    spec = stft(y)
    target = spec.abs()
    k = min(magnitude.shape[-1], target.shape[-1])
    target[:, :k] = magnitude[:, :k].to(device=wave.device, dtype=dtype)
    angles = spec / (spec.abs() + 1e-16)
    previous = torch.zeros((), dtype=spec.dtype, device=wave.device)
    for _ in range(n_iter):
        rebuilt = stft(istft(target * angles))
        angles = rebuilt - previous * (momentum / (1.0 + momentum)) if momentum else rebuilt
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    out = istft(target * angles).to(wave.dtype)
    return torch.cat([wave[:lead], out]) if lead else out


class MelProjection:
    """``project(x0_hat [1, N], i)`` for DiffWave's packed sampling state (:class:`diffwave.sample.ChunkedNetwork`):
    each input's samples ``offsets[k] : offsets[k] + F_k · hop`` are projected toward its own mel's magnitude with
    :func:`griffin_lim_toward` at the steps ``config`` chooses, out of ``num_steps``. The projection sees whole inputs,
    never chunks, so it does not depend on how the network was chunked."""

    def __init__(self, config: GLAGrad, mels: Sequence[Tensor], offsets: Sequence[int], mel_config: MelConfig,
                 num_steps: int) -> None:
        if len(mels) != len(offsets):
            raise ValueError(f"{len(mels)} mels for {len(offsets)} offsets")
        self.config = config
        self.mel_config = mel_config
        self.num_steps = num_steps
        self.offsets = list(offsets)
        self.lengths = [int(m.shape[-1]) * mel_config.hop_length for m in mels]
        self.magnitudes = [magnitude_from_mel(m, mel_config) for m in mels]
        self.calls: list[int] = []  # the steps at which something was projected (for tests and logs)

    def __call__(self, x0: Tensor, i: int) -> Tensor:
        n_iter = self.config.iterations_at(i, self.num_steps)
        if n_iter == 0:
            return x0
        self.calls.append(i)
        out = x0.clone()
        for o, n, mag in zip(self.offsets, self.lengths, self.magnitudes):
            out[0, o : o + n] = griffin_lim_toward(x0[0, o : o + n], mag, self.mel_config, n_iter,
                                                   self.config.momentum)
        return out
