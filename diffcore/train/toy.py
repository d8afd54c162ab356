"""A tiny reference :class:`~diffcore.train.task.TrainTask`: an MLP ε-predictor on synthetic Gaussian-mixture data.

It trains in seconds on a CPU, so it serves the engine's tests and smoke runs, and it shows a model family the
whole contract in 60 lines. The loss is the simple DDPM loss (Ho et al. 2020, Eq. 14) with its own linear β
schedule, so this module does not depend on the rest of diffcore:

    t ~ U{0..T-1},  ε ~ N(0, I),  x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε,  L = mean_d (ε − ε_θ(x_t, t))²      [B]

With ``deterministic=True`` the loss is instead a plain regression ``mean_d (f_θ(x_0, 0) − y)²`` with fixed
targets ``y``; without randomness, one process and several processes must give the same weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from diffcore.train.task import TrainTask

__all__ = ["ToyDenoiser", "ToyDataset", "ToyTask"]


class ToyDenoiser(nn.Module):
    """``model(x_t [B, D], t [B], cond=None) -> [B, D]``: an MLP on ``x_t`` and the scaled step ``t / T``."""

    def __init__(self, dim: int = 4, hidden: int = 32, num_steps: int = 50) -> None:
        super().__init__()
        self.num_steps = num_steps
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # a buffer, to exercise buffer copies

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        self.calls += 1
        tt = (t.float() / self.num_steps).unsqueeze(-1).to(x_t.dtype)
        return self.net(torch.cat([x_t, tt], dim=-1))


class ToyDataset(Dataset):
    """``n`` points of a fixed 2-component Gaussian mixture in ``R^dim`` with regression targets; items are
    ``{"x": [dim], "y": [dim], "index": int}``."""

    def __init__(self, n: int = 64, dim: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        sign = torch.randint(0, 2, (n, 1), generator=g).float() * 2 - 1
        self.x = sign * 1.5 + 0.5 * torch.randn(n, dim, generator=g)
        self.y = torch.sin(self.x) + 0.1 * torch.randn(n, dim, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i], "index": i}


class ToyTask(TrainTask):
    """The toy task; ``config`` is ``{"model": {"dim", "hidden", "num_steps"}, "data": {"n", "seed"}}``."""

    def __init__(self, dim: int = 4, hidden: int = 32, num_steps: int = 50, n: int = 64, data_seed: int = 0,
                 deterministic: bool = False) -> None:
        self.config = {"model": {"dim": dim, "hidden": hidden, "num_steps": num_steps},
                       "data": {"n": n, "seed": data_seed}, "deterministic": deterministic}
        self.deterministic = deterministic
        betas = torch.linspace(1e-4, 0.2, num_steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()

    def build_model(self) -> nn.Module:
        m = self.config["model"]
        return ToyDenoiser(m["dim"], m["hidden"], m["num_steps"])

    def train_dataset(self) -> Dataset:
        d = self.config["data"]
        return ToyDataset(d["n"], self.config["model"]["dim"], d["seed"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = batch["x"]
        if self.deterministic:
            pred = model(x0, torch.zeros(len(x0), dtype=torch.long, device=x0.device))
            return (pred.float() - batch["y"]).pow(2).mean(dim=-1)
        t = torch.randint(0, len(self.alphas_cumprod), (len(x0),), device=x0.device)
        eps = torch.randn_like(x0)
        a = self.alphas_cumprod.to(x0.device)[t].unsqueeze(-1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        return (model(x_t, t).float() - eps).pow(2).mean(dim=-1)
