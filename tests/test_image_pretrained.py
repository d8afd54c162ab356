"""The shipped image model (diffimage/pretrained/): names, offline loading, the fp16 file, the model card, the
package data that carries them, ImageModel.save, and the quickstart's first step."""

from __future__ import annotations

import fnmatch
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import diffimage.api as di
import diffimage.quickstart as quickstart
from diffcore.checkpoint import CheckpointError
from diffimage.cli import main
from diffimage.config import UNetConfig
from diffimage.model import UNet
from diffimage.pretrained import PRETRAINED_DIR, available_models, model_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
NAME = "mnist-small"


def test_the_shipped_model_loads_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a DeprecationWarning for a renamed config key
        di.load(NAME, "cpu")


def test_the_shipped_model_is_listed_and_loads_by_name_offline():
    assert NAME in di.available_models() == available_models()
    m = di.load(NAME, "cpu")
    assert m.image_shape == (1, 28, 28) and m.num_classes is None
    # its fp16 file, exact load, size and package data: the check of every shipped model below
    # it draws: two samples in [-1, 1], reproducible under a fixed generator
    a = m.sample(2, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0))
    b = m.sample(2, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 1, 28, 28) and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1


@pytest.mark.parametrize("name", available_models())
def test_every_shipped_model_is_fp16_small_packaged_and_loads_exactly_offline(name):
    """What each shipped image model must be, whichever it is: float16 on disk, widened to float32 exactly on load,
    at most 8 MiB, every file carried as package data, and a card beside the weights."""
    folder = model_dir(name)
    assert {"MODEL_CARD.md", "config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 8 * 2**20
    stored = load_file(str(folder / "model.safetensors"))
    assert stored and all(v.dtype == torch.float16 for v in stored.values())
    state = di.load(name, "cpu").model.state_dict()
    assert set(state) == set(stored)
    for k, v in stored.items():
        assert state[k].dtype == torch.float32 and torch.equal(state[k], v.float()), (name, k)
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "diffimage.pretrained"]
    for p in folder.iterdir():
        rel = p.relative_to(PRETRAINED_DIR).as_posix()
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), rel


def test_the_shipped_card_states_its_provenance():
    folder = model_dir(NAME)
    card = (folder / "MODEL_CARD.md").read_text()
    for needed in ("CC BY-SA 3.0", "MNIST", "held out", "FID", "samples", "reproduce", "diffimage train"):
        assert needed in card, needed
    prov = json.loads((folder / "config.json").read_text())["provenance"]
    assert prov["training_steps"] > 0 and prov["num_samples"] > 0
    assert f"{prov['fid_ddim50']:.1f}" in card  # the card states the measured FID of the provenance record


def test_unknown_names_are_refused_with_the_shipped_ones_and_a_local_folder_is_loaded_as_a_path(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match=f"not a shipped model name.*{NAME}"):
        di.load("no-such-model", "cpu")
    with pytest.raises(KeyError, match=NAME):
        model_dir("no-such-model")
    # a folder of the same name in the working directory does not replace the shipped model (issue 21): the bare
    # name is the shipped model (with a warning), ./NAME is the folder
    tiny = di.ImageModel(UNet(UNetConfig.preset("tiny")), info={"model": {}})
    monkeypatch.chdir(tmp_path)
    tiny.save(tmp_path / NAME)
    assert di.load(NAME, "cpu").image_shape == (1, 28, 28)
    assert di.load(f"./{NAME}", "cpu").image_shape == (3, 16, 16)


def test_save_round_trips_exactly_in_float32_and_rounds_once_in_float16(tmp_path):
    torch.manual_seed(0)
    net = UNet(UNetConfig.preset("tiny"))
    for p in net.parameters():  # zero-initialised layers would make the test blind
        p.data.normal_(0, 0.05)
    m = di.ImageModel(net, info={"model": {}, "sample": {"sampler": "ddim", "steps": 4}, "note": "kept"})
    out = m.save(tmp_path / "fp32")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    back = di.load(out, "cpu")
    assert back.info["note"] == "kept" and back.config == m.config and back.sample_defaults.steps == 4
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(back.sample(2, generator=g()), m.sample(2, generator=g()))
    half = di.load(m.save(tmp_path / "fp16", dtype=torch.float16), "cpu")
    for k, v in m.model.state_dict().items():
        assert torch.equal(half.model.state_dict()[k], v.half().float()), k
    assert not torch.equal(half.model.state_dict()["time_embed.0.weight"], m.model.state_dict()["time_embed.0.weight"])


def test_cli_samples_the_shipped_model_by_name(tmp_path):
    out = tmp_path / "s"
    assert main(["sample", "--model", NAME, "--n", "4", "--steps", "2", "--nrow", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 * 30 + 2, 2 * 30 + 2)  # grey PNG, 2 x 2 tiles of 28 px with 2 px padding
    assert json.loads((out / "manifest.json").read_text())["model"] == NAME


def test_export_in_float16_halves_the_weights_and_loads(tmp_path):
    src = tmp_path / "src"
    torch.manual_seed(1)
    net = UNet(UNetConfig.preset("tiny"))
    di.ImageModel(net, info={"model": net.config.to_dict()}).save(src)
    assert main(["export", str(src), "--out", str(tmp_path / "half"), "--dtype", "fp16"]) == 0
    stored = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.6 * (src / "model.safetensors").stat().st_size


def test_the_quickstart_first_draws_with_the_shipped_model(tmp_path, monkeypatch):
    monkeypatch.setattr(quickstart, "GRID_IMAGES", 4)
    lines: list[str] = []
    got = quickstart.sample_pretrained(tmp_path, "cpu", log=lines.append)
    assert got is not None and got["model"] == quickstart.PRETRAINED_MODEL == "mnist-uncond"
    # with the sampler its card recommends (the shipped sample defaults), said in the log
    assert "dpmpp, 20 steps" in lines[-1]
    # any shipped model draws the same way, with its own defaults (mnist-small: DDIM 50)
    got = quickstart.sample_pretrained(tmp_path, "cpu", name=NAME, log=lines.append)
    assert got is not None and got["model"] == NAME and "ddim, 50 steps" in lines[-1]
    assert Image.open(tmp_path / "pretrained_grid.png").size == (2 * 30 + 2, 2 * 30 + 2)
    assert re.search(r"pretrained_grid\.png in [0-9.]+ s", lines[-1])
    assert quickstart.sample_pretrained(tmp_path, "cpu", name="no-such-model", log=lines.append) is None


def test_the_shared_registry_locates_what_load_reads(tmp_path, monkeypatch):
    """diffimage's load goes through diffcore's ShippedModels.locate: a shipped name is its folder, an existing path
    is itself (~ expanded), anything else is refused naming the shipped models."""
    from diffcore.pretrained import ShippedModels
    from diffimage.pretrained import SHIPPED

    assert SHIPPED.locate(NAME) == model_dir(NAME)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run").mkdir()
    assert SHIPPED.locate("~/run") == tmp_path / "run"
    empty = ShippedModels(tmp_path / "none", "image model")
    with pytest.raises(CheckpointError, match=r"nothing: no such file or folder, and not a shipped model name "
                                              r"\(shipped: none\)"):
        empty.locate("nothing")
    with pytest.raises(CheckpointError, match=rf"typo: .*\(shipped: .*{NAME}"):
        SHIPPED.locate("typo")
