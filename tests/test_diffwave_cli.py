"""The ``diffwave`` command end to end, through subprocesses (``python -m diffwave.cli ...``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from diffwave.api import Vocoder, load, save_export
from diffwave.audio import save_audio
from diffwave.cli import main
from diffwave.config import DiffWaveConfig
from diffwave.mel import compute_mel
from diffwave.model import DiffWave
from diffwave.synth import make_dataset, speech_like

REPO = Path(__file__).resolve().parents[1]
SMALL = {"preset": "tiny", "residual_layers": 4, "residual_channels": 8, "dilation_cycle": 3, "embedding_hidden": 32}


def in_process(capsys, *args: str | os.PathLike) -> tuple[int, str, str]:
    """Run the command in this process (for the quick error paths): ``(status, stdout, stderr)``."""
    os.environ.pop("DIFFSTACK_DEBUG", None)
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def diffwave(*args: str | os.PathLike, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("DIFFSTACK_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "diffwave.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"diffwave {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A run trained for a few steps through `diffwave train` on synthetic speech (2 clips held out)."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    make_dataset(data, 5, duration_s=0.6, sample_rate=22050, seed=1)
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": SMALL,
        "data": {"holdout": 2, "crop_frames": 4},
        "train": {"batch_size": 2, "max_steps": 2, "num_workers": 0, "progress": False, "tensorboard": False,
                  "log_every": 1, "precision": "fp32", "device": "cpu"},
    }))
    proc = diffwave("train", "--recipe", recipe, "--run-dir", root / "run", "--data", data, "train.lr=1e-3")
    assert "trained to step 2" in proc.stdout
    return {"root": root, "data": data, "run": root / "run", "recipe": recipe}


def test_train_stores_the_resolved_recipe_and_resumes(trained):
    stored = yaml.safe_load((trained["run"] / "config.yaml").read_text())
    assert stored["train"]["lr"] == 1e-3 and stored["data"]["path"] == str(trained["data"].resolve())
    assert stored["model"]["residual_layers"] == 4
    # Without --recipe the run folder's own config.yaml is the recipe; a larger max_steps continues the run.
    proc = diffwave("train", "--run-dir", trained["run"], "train.max_steps=3")
    assert "trained to step 3" in proc.stdout


def test_train_errors_are_one_line(tmp_path, trained, capsys):
    code, _, err = in_process(capsys, "train", "--recipe", trained["recipe"], "--run-dir", tmp_path / "r",
                              "--data", trained["data"], "train.lrr=1")
    assert code == 2 and err.strip().count("\n") == 0 and "did you mean 'lr'" in err
    code, _, err = in_process(capsys, "train", "--recipe", trained["recipe"], "--run-dir", tmp_path / "r2")
    assert code == 2 and "data.path" in err and not (tmp_path / "r2").exists()


def test_checkpoint_to_vocode_round_trip(trained, tmp_path):
    wav_in = tmp_path / "speech.wav"
    wav = speech_like(0.8, 22050, seed=9)
    save_audio(wav_in, wav, 22050)
    mel = compute_mel(wav, DiffWaveConfig.preset("tiny").mel)
    np.save(tmp_path / "speech_mel.npy", mel.numpy())
    torch.save({"mel": mel}, tmp_path / "speech_mel.pt")
    out = tmp_path / "out.wav"
    diffwave("vocode", "--model", trained["run"], wav_in, "--out", out, "--device", "cpu")
    data, sr = sf.read(out)
    assert sr == 22050 and data.shape == (wav.shape[-1],) and np.isfinite(data).all() and np.abs(data).max() > 0
    folder = tmp_path / "mels"
    folder.mkdir()
    (tmp_path / "speech_mel.npy").rename(folder / "a.npy")
    (tmp_path / "speech_mel.pt").rename(folder / "b.pt")
    diffwave("vocode", "-m", trained["run"], folder, "--out", tmp_path / "voc", "--steps", "full")
    for name in ("a.wav", "b.wav"):
        data, sr = sf.read(tmp_path / "voc" / name)
        assert sr == 22050 and data.shape == (mel.shape[-1] * 256,)
    assert sorted(p.name for p in (tmp_path / "voc").iterdir()) == ["a.wav", "b.wav"]  # no temporary files


def test_vocoding_a_mel_of_the_other_preset_names_the_expected_one(trained, tmp_path, capsys):
    hifigan = compute_mel(speech_like(0.5, 22050, seed=2), DiffWaveConfig.preset("tiny", mel={
        "preset": "hifigan", "sample_rate": 22050}).mel)
    np.save(tmp_path / "h.npy", hifigan.numpy())
    code, _, err = in_process(capsys, "vocode", "--model", trained["run"], tmp_path / "h.npy", "--out",
                              tmp_path / "h.wav")
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0
    assert "'diffwave'-preset mel" in err
    assert not list(tmp_path.glob("h*.wav")) and not list(tmp_path.glob(".h*"))


def test_export_gives_the_ema_weights_with_identical_outputs(trained, tmp_path):
    diffwave("export", trained["run"], "--out", tmp_path / "exp")
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["config.json", "model.safetensors"]
    a, b = load(trained["run"], "cpu"), load(tmp_path / "exp", "cpu")
    assert a.config == b.config
    x, t, mel = torch.randn(2, 3 * 256), torch.tensor([0, 49]), torch.rand(2, 80, 3)
    torch.testing.assert_close(b.model(x, t, mel), a.model(x, t, mel), rtol=0, atol=0)
    torch.testing.assert_close(b.vocode(mel[0], generator=torch.Generator().manual_seed(1)),
                               a.vocode(mel[0], generator=torch.Generator().manual_seed(1)), rtol=0, atol=0)


def test_evaluate_writes_the_table_plot_and_wavs(trained, tmp_path):
    out = tmp_path / "eval"
    proc = diffwave("evaluate", "--model", trained["run"], "--out", out, "--no-dnsmos", "--gl-iters", "4")
    assert "Griffin-Lim" in proc.stdout  # the recipe's two held-out clips, found from the stored config
    table = json.loads((out / "metrics.json").read_text())
    assert set(table["means"]) == {"DiffWave (fast)", "Griffin-Lim"} and table["clips"]["Griffin-Lim"] == 2
    assert (out / "spectrograms.png").stat().st_size > 10_000 and len(list((out / "wavs").glob("*.wav"))) == 6


def test_generate_unconditional_clips_with_seeds(tmp_path):
    torch.manual_seed(0)
    cfg = DiffWaveConfig.preset("unconditional", residual_layers=4, residual_channels=8, dilation_cycle=3,
                                embedding_hidden=32, sample_rate=8000, audio_length=2000)
    model = DiffWave(cfg)
    torch.nn.init.normal_(model.output_projection.weight, std=0.3)
    save_export(model, {"model": cfg.to_dict()}, tmp_path / "unc")
    diffwave("generate", "--model", tmp_path / "unc", "--n", "3", "--batch-size", "1", "--seed", "5",
             "--out", tmp_path / "g")
    clips = [sf.read(tmp_path / "g" / f"sample_{i:04d}.wav") for i in range(3)]
    assert all(sr == 8000 and x.shape == (2000,) for x, sr in clips)
    # With --batch-size 1, clip i comes from seed 5 + i: the API reproduces it.
    expected = Vocoder(model.eval()).generate(1, torch.Generator().manual_seed(6))[0].numpy()
    np.testing.assert_allclose(clips[1][0], expected, atol=1 / 32768 + 1e-6)
    assert not np.allclose(clips[0][0], clips[1][0])
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert [c["seed"] for c in manifest["clips"]] == [5, 6, 7]

def test_vocoding_with_an_unconditional_model_is_refused(tmp_path, capsys):
    cfg = DiffWaveConfig.preset("unconditional", residual_layers=2, residual_channels=4, embedding_hidden=8)
    save_export(DiffWave(cfg), {"model": cfg.to_dict()}, tmp_path / "unc")
    save_audio(tmp_path / "a.wav", speech_like(0.3, 16000, seed=0), 16000)
    code, _, err = in_process(capsys, "vocode", "--model", tmp_path / "unc", tmp_path / "a.wav")
    assert code == 2 and "unconditional" in err and "diffwave generate" in err


def test_import_lmnt_reproduces_lmnt_outputs(shared_data, tmp_path):
    interop = shared_data / "interop"
    if not (interop / "lmnt_small_checkpoint.pt").is_file():
        pytest.skip(f"{interop} lacks lmnt_small_checkpoint.pt")
    proc = diffwave("import-lmnt", interop / "lmnt_small_checkpoint.pt", "--out", tmp_path / "lmnt")
    assert "imported" in proc.stdout
    voc = load(tmp_path / "lmnt", "cpu")
    io = torch.load(interop / "lmnt_small_io.pt", weights_only=True)
    with torch.no_grad():
        ours = voc.model(io["audio"], io["diffusion_step"], io["spectrogram"])
        ours_float = voc.model(io["audio"][:1], io["float_diffusion_step"], io["spectrogram"][:1])
    torch.testing.assert_close(ours, io["output"].squeeze(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_float, io["float_output"].squeeze(1), rtol=1e-5, atol=1e-5)
    assert voc.config.residual_layers == 6 and voc.config.residual_channels == 16
    # The lmnt file also loads directly, with the same weights.
    direct = load(interop / "lmnt_small_checkpoint.pt", "cpu")
    for k, v in direct.model.state_dict().items():
        assert torch.equal(v, voc.model.state_dict()[k])


def test_import_lmnt_of_a_missing_or_foreign_file_fails_cleanly(tmp_path, capsys):
    code, _, err = in_process(capsys, "import-lmnt", tmp_path / "nothing.pt", "--out", tmp_path / "x")
    assert code == 2 and "nothing.pt" in err and not (tmp_path / "x").exists()
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    code, _, err = in_process(capsys, "import-lmnt", tmp_path / "foreign.pt", "--out", tmp_path / "x")
    assert code == 2 and "not an lmnt checkpoint" in err


def test_unknown_command_suggests_the_closest(capsys):
    code, _, err = in_process(capsys, "vocod")
    assert code == 2 and "did you mean 'vocode'" in err


def test_evaluate_an_unconditional_model_with_digit_metrics(tmp_path, capsys):
    refs = tmp_path / "digits"
    for d in range(10):
        for i in (5, 10, 11):  # FSDD names {digit}_{speaker}_{index}; index 5-9 is the classifier's validation part
            save_audio(refs / f"{d}_synth_{i}.wav", speech_like(0.4, 8000, seed=10 * d + i), 8000)
    cfg = DiffWaveConfig.preset("unconditional", residual_layers=2, residual_channels=4, embedding_hidden=8,
                                sample_rate=8000, audio_length=4000)
    save_export(DiffWave(cfg), {"model": cfg.to_dict()}, tmp_path / "unc")
    code, out, _ = in_process(capsys, "evaluate", "--model", tmp_path / "unc", "--data", refs, "--n", "12",
                              "--classifier-epochs", "1", "--out", tmp_path / "ev")
    assert code == 0 and "FID" in out
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["fid"] >= 0 and 1 <= m["is"] <= 10 and 0 <= m["ndb_k"] <= 1 and m["n_generated"] == 12
    assert (tmp_path / "ev" / "digit_classifier.pt").is_file() and len(list((tmp_path / "ev" / "generated").iterdir())) == 10
