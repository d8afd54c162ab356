"""Training DiffWave through the engine: recipes, tasks, learning on real speech, resuming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from diffcore.checkpoint import CheckpointError, find_latest, load_checkpoint
from diffcore.config import ConfigError
from diffcore.train import Trainer, read_log
from diffwave.quickstart import QUICKSTART_RECIPE
from diffwave.data import split_files
from diffwave.recipe import DataConfig, DiffWaveRecipe, holdout_indices, load_diffwave_recipe
from diffwave.synth import make_dataset
from diffwave.task import RepeatedDataset, UnconditionalTask, VocoderTask, make_task

REPO = Path(__file__).resolve().parents[1]
SMALL = {"preset": "tiny", "residual_layers": 4, "residual_channels": 16, "dilation_cycle": 4, "embedding_hidden": 64}
FAST_TRAIN = {"num_workers": 0, "progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu",
              "ckpt_every": 0, "log_every": 1}


def recipe(data: Path, model=None, data_fields=None, **train) -> DiffWaveRecipe:
    return DiffWaveRecipe.from_dict({
        "model": model or SMALL,
        "data": {"path": str(data), **(data_fields or {})},
        "train": {**FAST_TRAIN, **train},
    })


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("synth")
    make_dataset(d, 6, duration_s=0.5, sample_rate=22050, seed=3)
    return d


# ------------------------------------------------------------------------------------------------ recipes


@pytest.mark.parametrize("name", ["ljspeech_base", "ljspeech_large", "ljspeech_prior", "sc09_unconditional",
                                  "fsdd_unconditional", "quickstart"])
def test_recipes_load(name):
    r = load_diffwave_recipe(REPO / "recipes" / f"{name}.yaml")
    assert r.data.path is None  # the user points it at their data
    if name.startswith("ljspeech"):
        preset, prior = ("base", {}) if name == "ljspeech_prior" else (name.split("_")[1], None)
        assert r.model == DiffWaveRecipe.from_dict({"model": {"preset": preset, "prior": prior}}).model
        assert (r.train.batch_size, r.train.lr, r.data.crop_frames) == (16, 2e-4, 62)  # the paper's settings
        assert r.train.precision == "auto"  # bf16 on GPUs that have it
    if name.endswith("unconditional"):
        assert not r.model.conditional and r.model.residual_channels == 256
    if name == "fsdd_unconditional":
        assert (r.model.sample_rate, r.model.audio_length, r.data.layout) == (8000, 8000, "fsdd")


def test_quickstart_recipe_file_equals_the_built_in_one():
    on_disk = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    assert DiffWaveRecipe.from_dict(on_disk) == DiffWaveRecipe.from_dict(QUICKSTART_RECIPE)


def test_data_shortcut_and_overrides(tmp_path):
    r = load_diffwave_recipe(REPO / "recipes" / "ljspeech_base.yaml", ["train.lr=1e-4", "data.holdout=2"],
                             data=tmp_path)
    assert r.data.path == str(tmp_path.resolve()) and r.train.lr == 1e-4 and r.data.holdout == 2
    with pytest.raises(ConfigError, match="crop_frames"):
        load_diffwave_recipe(REPO / "recipes" / "ljspeech_base.yaml", ["data.crop_frame=3"])


def test_holdout_is_spread_and_disjoint(synth_dir):
    assert holdout_indices(10, 3) == [2, 4, 7]
    assert holdout_indices(5, 0) == []
    with pytest.raises(ConfigError, match="no training clip"):
        holdout_indices(3, 3)
    train, held = split_files(DataConfig(path=str(synth_dir), holdout=2))
    assert len(train) == 4 and len(held) == 2 and not set(train) & set(held)
    with pytest.raises(ConfigError, match="data.path"):
        split_files(DataConfig())


def test_tasks_build_the_right_examples(synth_dir):
    r = recipe(synth_dir, data_fields={"crop_frames": 5, "holdout": 1}, batch_size=16)
    task = make_task(r)
    assert isinstance(task, VocoderTask) and len(task.train_files) == 5
    ds = task.train_dataset()
    assert isinstance(ds, RepeatedDataset) and len(ds) >= 16  # 5 clips repeated to fill a batch
    item = ds[0]
    assert item["audio"].shape == (5 * 256,) and item["mel"].shape == (80, 5)
    unc = make_task(recipe(synth_dir, model={"preset": "unconditional", **{k: v for k, v in SMALL.items()
                                                                           if k != "preset"},
                                             "sample_rate": 22050, "audio_length": 3000}, batch_size=2))
    assert isinstance(unc, UnconditionalTask) and unc.train_dataset()[0]["audio"].shape == (3000,)


# ------------------------------------------------------------------------------------------------ learning


def test_small_model_learns_a_real_ljspeech_clip(shared_data, tmp_path):
    clip = shared_data / "ljspeech" / "wavs" / "LJ001-0001.wav"
    if not clip.is_file():
        pytest.skip(f"{clip} is absent")
    r = recipe(clip, data_fields={"crop_frames": 4}, batch_size=8, lr=2e-3, max_steps=200, warmup_steps=10,
               ema_decay=0.99, seed=0)
    Trainer(make_task(r), r.train, tmp_path / "run").fit()
    losses = [row["loss"] for row in read_log(tmp_path / "run") if "loss" in row]
    assert len(losses) == 200
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.6 * first, (first, last)


def test_resumed_run_continues_from_the_checkpoint_step(synth_dir, tmp_path):
    r = recipe(synth_dir, data_fields={"crop_frames": 4}, batch_size=4, max_steps=3)
    run = tmp_path / "run"
    assert Trainer(make_task(r), r.train, run).fit()["step"] == 3
    first = load_checkpoint(find_latest(run))
    r6 = r.replace(train={"max_steps": 6})
    summary = Trainer(make_task(r6), r6.train, run).fit()
    assert summary["step"] == 6 and summary["resumed_from"].endswith("step_00000003.pt")
    steps = [row["step"] for row in read_log(run) if "loss" in row]
    assert steps == [1, 2, 3, 4, 5, 6]  # no step trained twice
    resume = read_log(run, event="resume")
    assert [row["step"] for row in resume] == [3]
    last = load_checkpoint(find_latest(run))
    assert last["step"] == 6 and last["config"]["train"]["max_steps"] == 6
    assert not torch.equal(first["model"]["output_projection.weight"], last["model"]["output_projection.weight"])


def test_a_run_saved_with_older_key_names_resumes(synth_dir, tmp_path):
    """A checkpoint whose stored config uses the names of earlier versions (fast_betas, diffusion.hybrid_lambda,
    no data.holdout_scheme) is the same model: resume maps the old names before comparing, and continues."""
    r = recipe(synth_dir, data_fields={"crop_frames": 4}, batch_size=4, max_steps=2)
    run = tmp_path / "run"
    Trainer(make_task(r), r.train, run).fit()
    path = find_latest(run)
    state = torch.load(path, weights_only=True)
    model = state["config"]["model"]
    model["fast_betas"] = model.pop("inference_betas")
    model["diffusion"]["hybrid_lambda"] = model["diffusion"].pop("vlb_weight")
    state["config"]["data"].pop("holdout_scheme")
    torch.save(state, path)
    r4 = r.replace(train={"max_steps": 4})
    summary = Trainer(make_task(r4), r4.train, run).fit()
    assert summary["step"] == 4 and summary["resumed_from"].endswith("step_00000002.pt")
    # a real change of the model is still refused
    path = find_latest(run)
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["residual_channels"] = 8
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="residual_channels"):
        Trainer(make_task(r.replace(train={"max_steps": 6})), r.train, run).fit()


def test_validation_and_sample_hooks_use_the_held_out_clips(synth_dir, tmp_path):
    r = recipe(synth_dir, data_fields={"crop_frames": 4, "holdout": 2}, batch_size=2, max_steps=2, val_every=1,
               sample_every=2)
    Trainer(make_task(r), r.train, tmp_path / "run").fit()
    val = [row["val/loss"] for row in read_log(tmp_path / "run") if "val/loss" in row]
    assert len(val) == 2 and all(0 < v < 2 for v in val)
    samples = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert samples == ["reference_step00000002.wav", "vocoded_step00000002.wav"]
    # The validation loss is computed with fixed crops, steps and noise: the same model gives the same value.
    task = make_task(r)
    model = task.build_model().eval()
    with torch.no_grad():
        assert task.validate(model, 0, None) == task.validate(model, 1, None)
