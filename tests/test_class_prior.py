"""A conditional model with a class prior is an unconditional generator: labels drawn from the prior when none are
given (the data's mixture), explicit labels still obeyed; and the clusters tool that makes such labels."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffcore.config import ConfigError
from diffimage.api import ImageModel
from diffimage.config import UNetConfig
from diffimage.model import UNet
from diffimage.sample import class_labels

REPO = Path(__file__).resolve().parent.parent


def tiny(prior=(0.1, 0.2, 0.3, 0.4)) -> UNetConfig:
    return UNetConfig.from_dict({"preset": "tiny", "image_size": 8, "channel_mult": [1], "attention_resolutions": [8],
                                 "diffusion": {"num_steps": 20}, "num_classes": len(prior), "class_prior": list(prior)})


@pytest.mark.parametrize("bad, message", [
    ({"class_prior": [0.5, 0.5]}, "one frequency per class"),
    ({"class_prior": [0.5, 0.6, -0.1]}, "non-negative"),
    ({"class_prior": [0.2, 0.2, 0.2]}, "summing to 1"),
    ({"num_classes": None, "class_prior": [1.0]}, "one frequency per class"),
])
def test_a_class_prior_must_be_one_frequency_per_class_summing_to_one(bad, message):
    with pytest.raises(ConfigError, match=message):
        UNetConfig.from_dict({"num_classes": 3, **bad})


def test_labels_are_drawn_from_the_prior_reproducibly_and_explicit_labels_still_win():
    cfg = tiny()
    draw = class_labels(cfg, 40_000, None, torch.device("cpu"), torch.Generator().manual_seed(0))
    freq = torch.bincount(draw, minlength=4).double() / draw.numel()
    # 40,000 draws: each frequency's standard error is below 0.0025
    torch.testing.assert_close(freq, torch.tensor(cfg.class_prior, dtype=torch.float64), rtol=0, atol=0.01)
    again = class_labels(cfg, 40_000, None, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.equal(draw, again)
    assert torch.equal(class_labels(cfg, 3, 2, torch.device("cpu")), torch.tensor([2, 2, 2]))
    assert torch.equal(class_labels(cfg, 2, [1, -1], torch.device("cpu")), torch.tensor([1, -1]))
    # without a prior, no classes still cycles them
    plain = UNetConfig.from_dict({**cfg.to_dict(), "class_prior": None})
    assert torch.equal(class_labels(plain, 6, None, torch.device("cpu")), torch.tensor([0, 1, 2, 3, 0, 1]))


def test_sampling_without_classes_gives_the_network_labels_from_the_prior(monkeypatch):
    """The network sees labels only where the prior has mass, per batch from the batch's generator (so a seeded
    call repeats itself), and the labels given explicitly where they are given."""
    seen: list[torch.Tensor] = []
    original = UNet._labels

    def spy(self, cond, batch, device):
        labels = original(self, cond, batch, device)
        seen.append(labels.clone())
        return labels

    monkeypatch.setattr(UNet, "_labels", spy)
    cfg = tiny(prior=(0.0, 0.5, 0.0, 0.5))
    torch.manual_seed(0)
    m = ImageModel(UNet(cfg), source="tiny prior")
    a = m.sample_seeded(12, seed=5, batch_size=4, sampler="ddim", steps=2)
    labels = torch.cat(seen)
    assert set(labels.tolist()) == {1, 3}
    seen.clear()
    b = m.sample_seeded(12, seed=5, batch_size=4, sampler="ddim", steps=2)
    assert torch.equal(a, b)
    seen.clear()
    m.sample(4, sampler="ddim", steps=2, classes=2)
    assert set(torch.cat(seen).tolist()) == {2}


def _clusters_tool():
    spec = importlib.util.spec_from_file_location("mnist_clusters", REPO / "tools" / "mnist_clusters.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mnist_clusters"] = module
    spec.loader.exec_module(module)
    return module


def test_the_clusters_tool_finds_separate_groups_and_writes_their_frequencies(tmp_path, capsys):
    """Three groups of 28×28 images bright in different thirds, 60/30/30 of the fitted 120, plus 30 unfitted ones:
    the clusters are the groups (purity 1), the prior their shares over the fitted images, the unfitted ones get
    their group's cluster."""
    rng = np.random.default_rng(0)
    groups = np.array([0] * 60 + [1] * 30 + [2] * 30 + [0, 1, 2] * 10)
    images = rng.integers(0, 30, size=(groups.size, 28, 28)).astype(np.uint8)
    for i, g in enumerate(groups):
        images[i, :, 9 * g:9 * g + 9] += 200
    np.savez(tmp_path / "d.npz", images=images, labels=groups.astype(np.uint8))
    tool = _clusters_tool()
    assert tool.main(["--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "c.npz"), "--clusters", "3",
                      "--fit", "120"]) == 0
    out = capsys.readouterr().out
    assert "purity against the annotated digits (not used for clustering): 1.000" in out
    with np.load(tmp_path / "c.npz") as c:
        ids, prior = c["labels"].astype(np.int64), c["class_prior"]
        assert np.array_equal(c["images"], images)
    mapping = {g: ids[np.flatnonzero(groups[:120] == g)[0]] for g in range(3)}
    assert len(set(mapping.values())) == 3
    assert np.array_equal(ids, np.array([mapping[g] for g in groups]))
    np.testing.assert_allclose(sorted(prior), [0.25, 0.25, 0.5])
    assert abs(prior.sum() - 1) < 1e-9
    line = next(s for s in out.splitlines() if s.startswith("model.class_prior:"))
    assert UNetConfig(num_classes=3, class_prior=tuple(float(v) for v in line.split("[")[1].rstrip("]").split(",")))
