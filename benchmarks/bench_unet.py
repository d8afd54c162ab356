"""DDPM U-Net benchmarks: training images/s and forward images/s per network evaluation.

The eager fp32 reference is the U-Net in the contiguous (NCHW) layout, float32, eager, with the default
(for-each) Adam: the computation of diffusers' ``UNet2DModel`` in the DDPM CIFAR-10 configuration. The fast variants
run the same weights in channels-last memory, under bf16 autocast, compiled, with fused Adam and (for inference)
CUDA graphs. Images are CIFAR-10 pictures from the shared data when present (speed does not depend on them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from benchmarks.bench_diffwave import TrainVariant, bench_train, train_trial
from benchmarks.common import Budget, Report, Row, data_root, run_variant, time_call
from diffcore.inference import InferenceConfig, InferenceRunner
from diffimage.config import UNetConfig
from diffimage.model import UNet

__all__ = ["build_unet", "images", "bench_unet_train", "bench_unet_forward", "ForwardVariant"]


def build_unet(preset: str, channels_last: bool, seed: int = 0) -> UNet:
    """U-Net ``preset`` with seeded weights (the zero-initialised output convolution stays zero: it does not change
    the speed) in the contiguous (``channels_last=False``) or channels-last layout (``UNet.set_runtime``)."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig.preset(preset))
    model.set_runtime(channels_last=channels_last)
    return model


def images(config: UNetConfig, batch: int, seed: int = 0) -> torch.Tensor:
    """[batch, C, H, W] in [-1, 1]: CIFAR-10 pictures (tiled) when the shared data has them and the shape fits, else
    uniform noise."""
    path = data_root() / "cifar10" / "train10k.npz"
    c, s = config.in_channels, config.image_size
    if path.is_file() and (c, s) == (3, 32):
        with np.load(path) as f:
            pics = f["images"][: max(batch, 1)]
        x = torch.from_numpy(np.resize(pics, (batch, 32, 32, 3))).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return x.contiguous()
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, c, s, s, generator=g) * 2 - 1


def bench_unet_train(
    report: Report,
    device: torch.device,
    variants: list[TrainVariant],
    *,
    preset: str = "cifar10",
    batch: int = 128,
    steps: int = 10,
    repeats: int = 3,
    loss_steps: int = 5,
    budget: Budget | None = None,
    min_left_s: float = 0.0,
) -> list[Row]:
    """Training images/s: ``bench_train`` over the U-Net (``channels_last`` of a variant picks the layout)."""
    state = build_unet(preset, channels_last=False).state_dict()
    current: dict[str, bool] = {"cl": False}

    def build() -> UNet:
        model = build_unet(preset, channels_last=current["cl"])
        model.load_state_dict(copy.deepcopy(state))
        return model

    cfg = UNetConfig.preset(preset)
    x = images(cfg, batch)
    rows: list[Row] = []
    losses: list[float] = []
    for variant in variants:
        current["cl"] = variant.channels_last
        rows += bench_train(report, device, [variant], batch=batch, steps=steps, repeats=repeats,
                            loss_steps=loss_steps, budget=budget, min_left_s=min_left_s, build=build,
                            benchmark="unet_train", data=(x, None), unit="images/s", per_step=batch,
                            reference_losses=losses)
    return rows


@dataclass
class ForwardVariant:
    name: str
    config: InferenceConfig
    baseline: bool = False


def bench_unet_forward(
    report: Report,
    device: torch.device,
    variants: list[ForwardVariant],
    *,
    preset: str = "cifar10",
    batch: int = 256,
    repeats: int = 5,
    warmup: int = 2,
    budget: Budget | None = None,
    min_left_s: float = 0.0,
) -> list[Row]:
    """Images per second through one network evaluation (eval mode, inference) at ``batch``."""
    state = build_unet(preset, channels_last=False).state_dict()
    cfg = UNetConfig.preset(preset)
    x = images(cfg, batch).to(device)
    t = torch.randint(0, cfg.diffusion.num_steps, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
    reference: dict[str, torch.Tensor] = {}
    rows = []
    for variant in variants:
        row = Row("unet_forward", variant.name, batch, "images/s", None, settings={"baseline": variant.baseline})
        if budget is not None and not variant.baseline and not budget.allows(min_left_s):
            row.error = f"skipped: {budget.left():.0f} s of the time budget left, this variant needs ~{min_left_s:.0f} s"
            rows.append(report.add(row))
            continue

        def run(variant: ForwardVariant = variant, row: Row = row) -> None:
            model = build_unet(preset, channels_last=variant.config.channels_last)
            model.load_state_dict(state)
            # the output convolution starts at zero; give it weights so the deviation below measures something
            torch.manual_seed(1)
            torch.nn.init.normal_(model.conv_out.weight, std=0.02)
            runner = InferenceRunner(model, device, variant.config)
            row.settings.update(runner.describe())
            out: dict[str, torch.Tensor] = {}
            with runner.context():
                def call() -> None:
                    out["y"] = runner(x, t)

                row.seconds = time_call(call, device, warmup=warmup, repeats=repeats, budget=budget)
            y = out["y"].float().cpu()
            row.value = batch / float(np.median(row.seconds))
            if variant.baseline:
                reference["y"] = y
            elif "y" in reference:
                ref = reference["y"]
                row.notes["rel_rms_error"] = float((y - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())

        rows.append(run_variant(report, row, run, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def unet_trial(preset: str, device: torch.device, variant: TrainVariant) -> Callable[[int], None]:
    """batch → one training step of a U-Net at that batch (for the largest-batch search)."""
    cfg = UNetConfig.preset(preset)
    return train_trial(lambda: build_unet(preset, variant.channels_last), variant, device,
                       lambda b: (images(cfg, b), None))
