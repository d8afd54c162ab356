"""The shipped class-conditional model ``mnist-cond`` (issue 20): it loads by name offline from its fp16 file, draws
the asked-for class through the API and the command line, and its card states the figures of its provenance."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

import diffimage.api as di
from diffimage.cli import main
from diffimage.pretrained import model_dir

NAME = "mnist-cond"


def draw(m: di.ImageModel, classes: list[int], seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return m.sample(len(classes), sampler="dpmpp", steps=8, guidance_scale=scale, classes=classes,
                    generator=torch.Generator().manual_seed(seed))


def test_mnist_cond_is_shipped_and_loads_by_name_offline():
    assert NAME in di.available_models()
    m = di.load(NAME, "cpu")
    assert m.image_shape == (1, 28, 28) and m.num_classes == 10 and m.config.diffusion.edm is not None
    # its fp16 file, size and package data: test_image_pretrained.py checks every shipped model


def test_the_label_decides_the_digit():
    """The same noise drawn as a 1 and as a 0: MNIST ones carry far less ink than zeros (mean pixel of the shared
    training set: 0.076 for ones, 0.17 for zeros, on a 0..1 scale), so a model that ignored its label, or mapped
    labels to the wrong digits, would fail. Also: guided samples are in range and reproducible."""
    m = di.load(NAME, "cpu")
    seeds = 6
    ones = draw(m, [1] * seeds)
    zeros = draw(m, [0] * seeds)
    assert ones.shape == (seeds, 1, 28, 28) and ones.min() >= -1 and ones.max() <= 1
    ink = lambda x: ((x + 1) / 2).mean(dim=(1, 2, 3))  # noqa: E731  per image, 0..1
    assert bool((ink(ones) < ink(zeros)).all()), (ink(ones), ink(zeros))
    assert ink(ones).mean() < 0.7 * ink(zeros).mean()
    assert torch.equal(draw(m, [1] * seeds), ones)
    # with the same noise, every class gives a different image
    row = draw(m, list(range(10)), seed=3)
    flat = row.flatten(1)
    dist = torch.cdist(flat, flat)
    assert bool((dist + torch.eye(10) * 1e9 > 1.0).all())


def test_cli_draws_sevens_by_name(tmp_path):
    out = tmp_path / "s"
    assert main(["sample", "--model", NAME, "--class", "7", "--n", "2", "--steps", "4",
                 "--device", "cpu", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == [7, 7] and manifest["model"] == NAME
    # the card's recommended settings are the shipped defaults
    prov = json.loads((model_dir(NAME) / "config.json").read_text())["provenance"]
    assert manifest["sampler"] == "dpmpp" and manifest["guidance_scale"] == prov["recommended_guidance_scale"]
    assert np.asarray(Image.open(out / "grid.png")).ndim == 2  # grey digits


def test_the_card_states_its_provenance():
    folder = model_dir(NAME)
    card = (folder / "MODEL_CARD.md").read_text()
    prov = json.loads((folder / "config.json").read_text())["provenance"]
    for needed in ("CC BY-SA 3.0", "MNIST", "held out", "FID", "reproduce", "diffimage train", "2-core AMD EPYC"):
        assert needed in card, needed
    assert prov["training_steps"] > 0 and prov["cpu_minutes"] > 0
    assert str(prov["training_steps"]) in card and f"{prov['cpu_minutes']:.1f}" in card
    scale, acc, fid = prov["recommended_guidance_scale"], 100 * prov["class_accuracy"], prov["fid"]
    assert f"Recommended guidance scale: **{scale:g}** — class accuracy **{acc:.1f} %** with FID **{fid:.1f}**" in card
    # and that scale is the shipped default
    assert di.load(NAME, "cpu").sample_defaults.guidance_scale == scale
