"""DPM-Solver++(2M) through diffimage: the API and the command line drive diffcore's dpmpp_2m_sample for EDM and VP
U-Nets, with guidance for a class-conditional one (issue 20)."""

from __future__ import annotations

import json

import pytest
import torch

from diffcore.discretization import karras_sigmas
from diffcore.guidance import guided
from diffcore.samplers import dpmpp_2m_sample
from diffimage.api import ImageModel, load
from diffimage.cli import main
from diffimage.config import UNetConfig
from diffimage.grid import make_grid
from diffimage.model import UNet
from diffimage.sample import denoiser_of

def load_png(path) -> torch.Tensor:
    """A PNG as uint8 ``[H, W, C]`` (the layout of :func:`make_grid`)."""
    import numpy as np
    from PIL import Image

    a = np.array(Image.open(path))
    return torch.from_numpy(a if a.ndim == 3 else a[..., None])


EDM = {"edm": {"sigma_data": 0.5, "time_scale": 250.0}}


def tiny(diffusion: dict, num_classes: int | None = None) -> ImageModel:
    torch.manual_seed(0)
    cfg = UNetConfig.from_dict({"preset": "tiny", "image_size": 8, "channel_mult": [1], "attention_resolutions": [8],
                                "scale_shift_norm": True, "num_classes": num_classes, "diffusion": diffusion})
    model = UNet(cfg)
    with torch.no_grad():  # a freshly built U-Net zeroes its output layer; make it say something
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ImageModel(model, info={"model": cfg.to_dict(), "sample": {"sampler": "dpmpp", "steps": 4}})


@pytest.mark.parametrize("diffusion", [EDM, {"num_steps": 20}], ids=["edm", "vp"])
def test_api_dpmpp_is_the_diffcore_sampler_with_one_call_per_step(diffusion):
    m = tiny(diffusion)
    calls = []
    hook = m.model.register_forward_pre_hook(lambda mod, args: calls.append(args[1].clone()))
    x = m.sample(3, sampler="dpmpp", steps=4, generator=torch.Generator().manual_seed(1))
    hook.remove()
    assert x.shape == (3, 3, 8, 8) and len(calls) == 4
    den = denoiser_of(m.model, m.schedule)
    want = dpmpp_2m_sample(den, (3, 3, 8, 8), karras_sigmas(den.sigma_min, den.sigma_max, 4),
                           generator=torch.Generator().manual_seed(1), dtype=torch.float32).clamp(-1, 1)
    torch.testing.assert_close(x, want, rtol=0, atol=1e-6)
    heun = m.sample(3, sampler="heun", steps=4, generator=torch.Generator().manual_seed(1))
    assert (heun - x).abs().max() > 1e-3  # a different solver over the same levels


def test_guided_dpmpp_for_a_class_conditional_model():
    m = tiny(EDM, num_classes=3)
    classes = [0, 1, 2, 2]
    x = m.sample(4, sampler="dpmpp", steps=3, guidance_scale=2.5, classes=classes,
                 generator=torch.Generator().manual_seed(2))
    den = guided(denoiser_of(m.model), 2.5, null_cond=m.model.null_label)
    want = dpmpp_2m_sample(den, (4, 3, 8, 8), karras_sigmas(den.sigma_min, den.sigma_max, 3),
                           cond=torch.tensor(classes), generator=torch.Generator().manual_seed(2),
                           dtype=torch.float32).clamp(-1, 1)
    torch.testing.assert_close(x, want, rtol=0, atol=1e-6)
    plain = m.sample(4, sampler="dpmpp", steps=3, guidance_scale=1.0, classes=classes,
                     generator=torch.Generator().manual_seed(2))
    assert (plain - x).abs().max() > 1e-3


def test_cli_sample_with_dpmpp_and_a_class(tmp_path, capsys):
    m = tiny(EDM, num_classes=3)
    m.save(tmp_path / "model")
    out = tmp_path / "o"
    assert main(["sample", "--model", str(tmp_path / "model"), "--n", "4", "--sampler", "dpmpp", "--steps", "3",
                 "--class", "2", "--guidance-scale", "2", "--out", str(out), "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sampler"] == "dpmpp" and manifest["steps"] == 3 and manifest["classes"] == [2] * 4
    assert manifest["guidance_scale"] == 2.0 and (out / "grid.png").is_file()
    # the command draws what the API draws for the same seed (the grid holds the same images, as 8-bit levels)
    want = load(tmp_path / "model", "cpu").sample_seeded(4, 0, 64, sampler="dpmpp", steps=3, classes=[2] * 4,
                                                        guidance_scale=2.0)
    assert torch.equal(load_png(out / "grid.png"), make_grid(want))
