"""Device names → ``torch.device``: the one rule every command, loader and the training engine use.

``auto`` is the first CUDA GPU when there is one, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are taken
as asked. A name that is none of these, or a GPU this machine does not have, is a
:class:`~diffcore.errors.ConfigError` that names the setting and lists the valid names.
"""

from __future__ import annotations

import re

import torch

from diffcore.errors import ConfigError

__all__ = ["VALID_DEVICES", "resolve_device"]

#: The device names the commands and loaders accept.
VALID_DEVICES = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(device: str | torch.device = "auto", *, what: str = "device") -> torch.device:
    """The ``torch.device`` a device name means (module docstring); a ``torch.device`` is returned as is.

    ``what`` names the setting in error messages (``"train.device"`` for the training engine).
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ConfigError(f"{what} must be a name ({VALID_DEVICES}), got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d{1,4}))?", name)
    if m is None:
        raise ConfigError(f"unknown {what} {device!r} (valid: {VALID_DEVICES})")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} {device!r} was asked for but no CUDA GPU is available (use cpu or auto)")
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise ConfigError(f"{what} {device!r}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"{what} {device!r} was asked for but no Apple MPS GPU is available (use cpu or auto)")
    return torch.device(name)
