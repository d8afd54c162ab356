"""The ``diffimage`` command: train → checkpoint → sample round trip in subprocesses, export → load, evaluate (bits/dim
and the FID/KID path with a small feature network), the one-line errors, grids and the recipes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffimage.api import load, small_feature_network
from diffimage.cli import main
from diffimage.data import build_datasets, dataset_images
from diffimage.fid import compute_fid
from diffimage.grid import grid_shape, make_grid, save_grid, to_uint8
from diffimage.quickstart import QUICKSTART_RECIPE, quickstart_recipe
from diffimage.recipe import ImageRecipe, load_image_recipe

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "model": {"preset": "tiny", "image_size": 8, "channel_mult": [1], "attention_resolutions": [8],
              "scale_shift_norm": True, "diffusion": {"num_steps": 20}},
    "data": {"num_synthetic": 48, "holdout": 4},
    "train": {"max_steps": 3, "batch_size": 8, "lr": 0.01, "num_workers": 0, "device": "cpu", "log_every": 1,
              "ckpt_every": 0, "progress": False, "tensorboard": False, "sample_every": 3},
    "sample": {"num_images": 4, "steps": 3},
}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "diffimage", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny model trained by ``diffimage train`` in a subprocess."""
    root = tmp_path_factory.mktemp("diffimage")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    res = run_cli("train", "--recipe", str(recipe), "--run-dir", str(root / "run"))
    assert res.returncode == 0, res.stderr
    assert "trained to step 3" in res.stdout
    return root / "run"


# --------------------------------------------------------------------------------------------------------------
# train -> checkpoint -> sample


def test_train_checkpoint_sample_round_trip(run_dir, tmp_path):
    assert (run_dir / "checkpoints" / "step_00000003.pt").is_file()
    assert (run_dir / "config.yaml").is_file()
    hook = Image.open(run_dir / "samples" / "samples_step00000003.png")
    assert hook.size == (2 * 10 + 2, 2 * 10 + 2)  # the training hook's 2×2 grid of 8×8 images, 2-pixel padding

    out = tmp_path / "samples"
    res = run_cli("sample", "--model", str(run_dir), "--n", "6", "--nrow", "3", "--steps", "4", "--batch-size", "4",
                  "--format", "both", "--out", str(out), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 * (8 + 2) + 2, 3 * (8 + 2) + 2, 3)  # 2 rows x 3 columns
    files = sorted(out.glob("sample_*.png"))
    assert [f.name for f in files] == [f"sample_{i:06d}.png" for i in range(6)]
    tiles = [np.asarray(Image.open(f)) for f in files]
    for i, tile in enumerate(tiles):
        r, c = divmod(i, 3)
        assert tile.shape == (8, 8, 3)
        np.testing.assert_array_equal(grid[2 + r * 10:10 + r * 10, 2 + c * 10:10 + c * 10], tile)
    assert not np.array_equal(tiles[0], tiles[1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["n"], manifest["seed"], manifest["sampler"], manifest["steps"]) == (6, 0, "ddim", 4)
    # the batch starting at image i uses seed + i: images 4, 5 are the first two of a run seeded 4
    m = load(run_dir, "cpu")
    again = m.sample(2, steps=4, generator=torch.Generator().manual_seed(4))
    np.testing.assert_array_equal(to_uint8(again).permute(0, 2, 3, 1).numpy(), np.stack(tiles[4:6]))
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporary file


def test_export_then_load_gives_identical_samples(run_dir, tmp_path):
    assert main(["export", str(run_dir), "--out", str(tmp_path / "exp")]) == 0
    assert {p.name for p in (tmp_path / "exp").iterdir()} == {"config.json", "model.safetensors"}
    a, b = load(run_dir, "cpu"), load(tmp_path / "exp", "cpu")
    for sampler in ("ddim", "ddpm", "heun"):
        xa = a.sample(3, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(7))
        xb = b.sample(3, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(7))
        assert xa.shape == (3, 3, 8, 8) and torch.equal(xa, xb)
        assert xa.abs().max() <= 1.0


# --------------------------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_bits_per_dim_on_the_recipes_held_out_images(run_dir, tmp_path):
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(run_dir), "--metrics", "nll", "--num-images", "3", "--seed", "5",
                 "--device", "cpu", "--out", str(out)]) == 0
    got = json.loads((out / "metrics.json").read_text())["nll"]
    assert got["num_images"] == 3 and "held-out" in got["images"]
    recipe = ImageRecipe.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    images, _ = dataset_images(build_datasets(recipe.data, recipe.model)[1], limit=3)
    m = load(run_dir, "cpu")
    expected = m.bits_per_dim(images, generator=torch.Generator().manual_seed(5))
    assert got["bits_per_dim"] == pytest.approx(float(expected.mean()), rel=1e-6)


def test_evaluate_fid_and_kid_with_a_small_feature_network_and_cached_statistics(run_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, size=(40, 8, 8, 3)).astype(np.uint8)
    np.savez(tmp_path / "ref.npz", images=ref)
    cache, out = tmp_path / "cache", tmp_path / "ev"
    args = ["evaluate", "--model", str(run_dir), "--metrics", "fid,kid", "--reference", str(tmp_path / "ref.npz"),
            "--num-samples", "24", "--batch-size", "12", "--steps", "3", "--cache-dir", str(cache), "--out",
            str(out), "--device", "cpu", "--feature", "small"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning: FID from 24 samples is biased upwards" in err and "--num-samples 10000" in err
    gen = json.loads((out / "metrics.json").read_text())["generation"]
    assert gen["num_samples"] == 24 and gen["num_reference"] == 40 and gen["features"] == "small-test-network"
    # an independent computation: the same samples, FID by the exact low-rank formula on fresh features
    m = load(run_dir, "cpu")
    samples = m.sample_seeded(24, 0, 12, steps=3)
    ref_t = torch.from_numpy(ref).permute(0, 3, 1, 2)
    expected = compute_fid(ref_t, samples, small_feature_network(), method="low_rank")
    assert gen["fid"] == pytest.approx(expected, rel=1e-5)
    assert gen["fid"] > 0 and np.isfinite(gen["kid"]) and gen["kid_std"] >= 0
    assert Image.open(out / "samples.png").size == (5 * 10 + 2, 5 * 10 + 2)  # 24 samples: 5 x 5 grid
    # the reference features are cached, then reused unchanged
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 1 and cached[0].startswith("ref_feats_")
    mtime = (cache / cached[0]).stat().st_mtime_ns
    assert main(args) == 0
    assert (cache / cached[0]).stat().st_mtime_ns == mtime
    assert json.loads((out / "metrics.json").read_text())["generation"]["fid"] == gen["fid"]
    # FID alone caches the reference statistics (mean, covariance) instead, with the same result
    assert main([a if a != "fid,kid" else "fid" for a in args]) == 0
    assert len(list(cache.glob("fid_stats_*.npz"))) == 1
    assert json.loads((out / "metrics.json").read_text())["generation"]["fid"] == pytest.approx(gen["fid"], rel=1e-9)


# --------------------------------------------------------------------------------------------------------------
# one-line errors


@pytest.mark.parametrize("argv, message", [
    (["sampel"], "did you mean 'sample'"),
    (["sample", "--model", "/nonexistent/run"], "no such file or folder"),
    (["train", "--recipe", "/nonexistent.yaml", "--run-dir", "x"], "does not exist"),
])
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_errors_about_the_recipe_and_the_model(run_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    assert main(["train", "--recipe", str(recipe), "--run-dir", str(tmp_path / "a"), "model.base_chanels=64"]) == 2
    assert "did you mean 'base_channels'" in capsys.readouterr().err
    digits = tmp_path / "digits.npz"
    np.savez(digits, images=np.zeros((20, 28, 28), np.uint8))
    assert main(["train", "--recipe", str(recipe), "--run-dir", str(tmp_path / "b"), "--data", str(digits)]) == 2
    err = capsys.readouterr().err
    assert "1x28x28" in err and "model.image_size=28 model.in_channels=1" in err
    assert main(["sample", "--model", str(run_dir), "--guidance-scale", "2"]) == 2
    assert "class-conditional" in capsys.readouterr().err
    assert main(["sample", "--model", str(run_dir), "--class", "1"]) == 2
    assert "unconditional" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "nothing")]) == 2
    capsys.readouterr()


# --------------------------------------------------------------------------------------------------------------
# grids and recipes


def test_grid_layout_and_uint8_conversion(tmp_path):
    u8 = torch.randint(0, 256, (5, 1, 3, 4), dtype=torch.uint8)
    assert torch.equal(to_uint8(u8.float() / 127.5 - 1.0), u8)  # the 256 levels survive [-1, 1] and back
    assert grid_shape(5) == (2, 3) and grid_shape(5, nrow=5) == (1, 5) and grid_shape(2, nrow=8) == (1, 2)
    g = make_grid(u8, nrow=2, padding=1, pad_value=7)
    assert g.shape == (3 * 4 + 1, 2 * 5 + 1, 1)
    assert torch.equal(g[1 + 2 * 4:4 + 2 * 4, 1:5, 0], u8[4, 0])  # image 4: row 2, column 0
    assert (g[1 + 2 * 4:4 + 2 * 4, 6:10] == 7).all()  # the unused tile stays padding
    path = save_grid(u8, tmp_path / "g.png", nrow=2, padding=1)
    png = Image.open(path)
    assert png.mode == "L" and png.size == (11, 13)
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]


def test_recipes_load_and_the_quickstart_yaml_is_the_quickstart(shared_data):
    recipes = {p.stem: load_image_recipe(p) for p in (REPO / "recipes").glob("*.yaml")
               if p.stem in ("cifar10_ddpm", "cifar10_cond", "mnist", "image_quickstart")}
    assert len(recipes) == 4
    paper = recipes["cifar10_ddpm"]
    assert (paper.train.batch_size, paper.train.lr, paper.train.warmup_steps, paper.train.grad_clip,
            paper.train.ema_decay, paper.train.max_steps) == (128, 2e-4, 5000, 1.0, 0.9999, 800_000)
    d = paper.model.diffusion
    assert (d.schedule, d.num_steps, d.beta_start, d.beta_end, d.prediction, d.loss) == \
        ("linear", 1000, 1e-4, 0.02, "eps", "l2")
    assert paper.model == ImageRecipe.from_dict({"model": {"preset": "cifar10"}}).model
    cond = recipes["cifar10_cond"]
    assert cond.model.num_classes == 10 and cond.model.class_dropout == 0.1 and cond.sample.guidance_scale > 1
    assert recipes["image_quickstart"] == ImageRecipe.from_dict(QUICKSTART_RECIPE)
    # the quickstart sizes the tiny network to MNIST and the MNIST recipe takes the shared .npz as it is
    mnist_npz = shared_data / "mnist" / "train.npz"
    r = quickstart_recipe(mnist_npz)
    assert (r.model.image_size, r.model.in_channels, r.model.attention_resolutions) == (28, 1, (14,))
    mnist = load_image_recipe(REPO / "recipes" / "mnist.yaml", ["data.limit=200"], data=mnist_npz)
    train, held = build_datasets(mnist.data, mnist.model)
    assert len(train) == 200 - 64 and len(held) == 64 and train[0]["image"].shape == (1, 28, 28)


def test_a_recipe_from_before_the_run_time_switches_left_the_model_keeps_them_in_train():
    from diffimage.config import UNetConfig

    old = {"model": {"preset": "tiny", "learn_sigma": True, "use_checkpoint": True, "channels_last": False}}
    with pytest.warns(DeprecationWarning, match="use_checkpoint is a run-time switch"):
        recipe = ImageRecipe.from_dict(old)
    assert recipe.model == UNetConfig.preset("tiny", learned_variance=True)
    assert recipe.train.gradient_checkpointing is True and recipe.train.channels_last is False
    # what the train section says itself wins; the old defaults (channels-last, no checkpointing) say nothing
    old["train"] = {"gradient_checkpointing": False}
    with pytest.warns(DeprecationWarning):
        assert ImageRecipe.from_dict(old).train.gradient_checkpointing is False
    plain = ImageRecipe.from_dict({"model": {"preset": "tiny", "use_checkpoint": False, "channels_last": True}})
    assert plain.train == ImageRecipe().train
