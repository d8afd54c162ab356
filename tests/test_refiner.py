"""The Griffin-Lim refiner (diffwave.refiner): step 0 is the baseline, chunked equals whole, the phase features are
shift-invariant, exports load by path and through the vocoding interface, training resumes."""

from __future__ import annotations

import math

import pytest
import torch

from diffcore.checkpoint import CheckpointError
from diffwave.mel import MelConfig, compute_mel
from diffwave.metrics import griffin_lim_from_mel
from diffwave.refiner import GriffinLimRefiner, RefinerConfig, refiner_features

SR = 22050


def _small(**kw) -> RefinerConfig:
    return RefinerConfig.from_dict({"dim": 32, "intermediate": 64, "num_blocks": 2, "gl_iters": 8, **kw})


def _speechlike(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    f0 = 120 + 30 * torch.sin(2 * math.pi * 2 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SR
    harm = sum(torch.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 * (1 + torch.sin(2 * math.pi * 3 * t)) * 0.3
    return (env * harm + 0.01 * torch.randn(t.shape, generator=g)).float().clamp(-1, 1)


def _perturbed(model: GriffinLimRefiner, seed: int = 1) -> GriffinLimRefiner:
    """The zero-initialised head made non-zero, so the correction is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.head.weight.copy_(0.05 * torch.randn(model.head.weight.shape, generator=g))
        model.head.bias.copy_(0.05 * torch.randn(model.head.bias.shape, generator=g))
    return model


def test_untrained_refiner_returns_the_griffin_lim_waveform():
    torch.manual_seed(0)
    config = _small()
    model = GriffinLimRefiner(config).eval()
    mel = compute_mel(_speechlike(), config.mel)[None]
    with torch.no_grad():
        out = model(mel)
    gl = griffin_lim_from_mel(mel, config.mel, n_iter=config.gl_iters, momentum=config.gl_momentum)
    assert out.shape == gl.shape
    assert (out - gl).abs().max() < 1e-5 * gl.abs().max()
    # and a trained-looking (non-zero) head does change it
    with torch.no_grad():
        moved = _perturbed(model)(mel)
    assert (moved - gl).abs().max() > 1e-3


@pytest.mark.parametrize("max_frames", [20, 33, 50])
def test_chunked_correction_equals_whole(max_frames):
    torch.manual_seed(0)
    model = _perturbed(GriffinLimRefiner(_small(kernel=5))).eval()
    mel = compute_mel(_speechlike(1.5), model.config.mel)[None]
    start = model.griffin_lim(mel)
    with torch.no_grad():
        whole = model(mel, start)
        chunked = model(mel, start, max_frames=max_frames)
    assert torch.allclose(whole, chunked, atol=1e-5), (whole - chunked).abs().max()


def test_chunking_refuses_a_window_without_a_core():
    model = GriffinLimRefiner(_small()).eval()
    mel = compute_mel(_speechlike(), model.config.mel)[None]
    with pytest.raises(ValueError, match="max_frames"):
        model(mel, max_frames=2 * model.context_frames)


def test_phase_features_are_invariant_to_a_shift_by_whole_hops():
    c = MelConfig.diffwave()
    x = _speechlike(1.0)
    shifted = torch.cat([torch.zeros(3 * c.hop_length), x])
    window = torch.hann_window(c.win_length, periodic=True)

    def feats(w):
        spec = torch.stft(w, c.n_fft, c.hop_length, c.win_length, window=window, center=True, return_complex=True)
        mel = torch.zeros(c.n_mels, spec.shape[-1])
        return refiner_features(spec[None], mel[None], c)[0]

    a, b = feats(x), feats(shifted)
    # interior frames (away from the reflect padding of both signals) agree
    assert torch.allclose(a[:, 5:40], b[:, 8:43], atol=1e-3)


def test_config_checks():
    with pytest.raises(Exception, match="odd"):
        RefinerConfig.from_dict({"kernel": 4})
    with pytest.raises(Exception, match="positive"):
        RefinerConfig.from_dict({"dim": 0})
    with pytest.raises(Exception, match="gl_momentum"):
        RefinerConfig.from_dict({"gl_momentum": 1.0})
    assert RefinerConfig.from_dict(RefinerConfig().to_dict()) == RefinerConfig()
    assert RefinerConfig().receptive_field == 1 + 6 * 6


def _export(tmp_path, model):
    from diffcore.checkpoint import write_export
    from diffwave.refiner import NETWORK_NAME

    return write_export(tmp_path / "export", model.state_dict(), {"network": NETWORK_NAME,
                                                                  "model": model.config.to_dict()})


def test_export_loads_through_the_vocoding_interface(tmp_path):
    import diffwave.api as dw

    torch.manual_seed(0)
    model = _perturbed(GriffinLimRefiner(_small())).eval()
    out = _export(tmp_path, model)
    voc = dw.load(out, "cpu")
    assert isinstance(voc, dw.RefinerVocoder) and "Griffin-Lim" in repr(voc)
    wav = _speechlike()
    mel = voc.mel(wav)
    F = mel.shape[-1]
    one = voc.vocode(mel)
    assert one.shape == (F * voc.hop_length,) and one.abs().max() <= 1.0
    with torch.no_grad():
        direct = model(mel[None])[0]
    n = direct.shape[-1]
    assert torch.allclose(one[:n], direct.clamp(-1, 1), atol=1e-5)
    batch = voc.vocode(torch.stack([mel, mel]))
    assert batch.shape == (2, F * voc.hop_length) and torch.allclose(batch[0], one, atol=1e-5)
    waves, lengths = voc.vocode(torch.stack([mel, mel]), lengths=[F, F // 2])
    assert lengths.tolist() == [F * voc.hop_length, (F // 2) * voc.hop_length]
    assert waves[1, lengths[1]:].abs().max() == 0
    listed = voc.vocode([mel, mel[:, : F // 2]])
    assert [w.shape[-1] for w in listed] == [F * voc.hop_length, (F // 2) * voc.hop_length]
    assert isinstance(voc.vocode(mel.numpy()), type(mel.numpy()))
    with pytest.raises(ValueError, match="lengths"):
        voc.vocode(torch.stack([mel, mel]), lengths=[True, True])
    with pytest.raises(ValueError, match="vocoder"):
        voc.generate(2)


def test_export_with_bad_weights_is_refused(tmp_path):
    import diffwave.api as dw
    from diffcore.checkpoint import write_export
    from diffwave.refiner import NETWORK_NAME

    model = GriffinLimRefiner(_small())
    state = model.state_dict()
    state["head.bias"] = torch.full_like(state["head.bias"], float("nan"))
    write_export(tmp_path / "nan", state, {"network": NETWORK_NAME, "model": model.config.to_dict()})
    with pytest.raises(CheckpointError, match="NaN"):
        dw.load(tmp_path / "nan", "cpu")
    write_export(tmp_path / "wrong", model.state_dict(), {"network": NETWORK_NAME,
                                                          "model": {**model.config.to_dict(), "dim": 48}})
    with pytest.raises(CheckpointError, match="do not fit|shape"):
        dw.load(tmp_path / "wrong", "cpu")


def test_training_lowers_the_loss_and_resumes(tmp_path):
    from diffcore.checkpoint import find_latest, load_checkpoint
    from diffwave.refiner_train import export_refiner, read_record, train_refiner

    run = tmp_path / "run"
    recipe = _budgeted(tmp_path, "train.warmup_steps=1", "train.lr=2e-3")
    train_refiner(run, recipe, cpu_minutes=0.05, with_dnsmos=False, log=lambda s: None)
    first = load_checkpoint(find_latest(run))
    assert first["step"] > 0 and first["cpu_seconds"] >= 3.0
    train_refiner(run, recipe, cpu_minutes=0.02, with_dnsmos=False, log=lambda s: None)
    second = load_checkpoint(find_latest(run))
    assert second["step"] > first["step"] and len(read_record(run)[1]) == 2
    # the EMA export of the last state loads and vocodes
    import diffwave.api as dw

    out = export_refiner(run, tmp_path / "exp", which="last")
    voc = dw.load(out, "cpu")
    assert voc.vocode(voc.mel(_speechlike(0.5))).isfinite().all()


def _recipe(tmp_path, *extra):
    from diffwave.recipe import load_diffwave_recipe

    from diffwave.audio import save_audio

    data = tmp_path / "clips"
    for i in range(3):
        save_audio(data / f"clip{i}.wav", _speechlike(0.8, seed=i), SR)
    over = ["train.max_steps=2", "train.batch_size=2", "train.val_every=2", "train.ckpt_every=1",
            "train.device=cpu", "train.progress=false", "train.tensorboard=false", "model.dim=32",
            "model.intermediate=64", "model.num_blocks=1", "model.gl_iters=4", "data.holdout=1",
            "loss.stft_sizes=[256,512]", "data.crop_frames=12", *extra]
    return load_diffwave_recipe("recipes/ljspeech_refiner.yaml", over, data=data)


def _budgeted(tmp_path, *extra):
    """:func:`_recipe` for the CPU-budget driver: no step limit that a test budget reaches, no periodic checkpoint,
    one of the two training clips kept out as the validation set."""
    return _recipe(tmp_path, "train.max_steps=1000000", "train.ckpt_every=0", "train.val_every=0", "validation=1",
                   *extra)


def test_a_refiner_recipe_trains_through_the_engine_and_warm_starts(tmp_path):
    import diffwave.api as dw
    from diffcore.train import Trainer
    from diffwave.refiner_task import RefinerRecipe, RefinerTask
    from diffwave.task import make_task

    recipe = _recipe(tmp_path)
    assert isinstance(recipe, RefinerRecipe)
    task = make_task(recipe)
    assert isinstance(task, RefinerTask)
    summary = Trainer(task, recipe.train, tmp_path / "run").fit()
    assert summary["step"] == 2 and math.isfinite(summary["loss"])
    voc = dw.load(tmp_path / "run", "cpu")
    assert isinstance(voc, dw.RefinerVocoder)
    export = voc.save(tmp_path / "export")
    # a warm start begins from the export's weights exactly
    warm = make_task(_recipe(tmp_path, f"init_from={export}")).build_model()
    for k, v in voc.model.state_dict().items():
        assert torch.equal(warm.state_dict()[k], v), k
    # another network refuses to warm-start from it
    with pytest.raises(Exception, match="differs"):
        make_task(_recipe(tmp_path, f"init_from={export}", "model.dim=48")).build_model()


def test_the_recipe_class_is_chosen_without_expanding_aliases(tmp_path):
    from diffwave.recipe import DiffWaveRecipe, _names_network, load_diffwave_recipe

    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
              for i in range(1, 12)]
    bomb.write_text("\n".join(lines) + "\nnetwork: refiner\n")
    assert _names_network(bomb, []) == "refiner"  # composed, not constructed: returns at once
    assert _names_network(bomb, ["network=diffwave"]) == "diffwave"
    assert _names_network("recipes/ljspeech_prior.yaml", []) is None
    assert isinstance(load_diffwave_recipe("recipes/quickstart.yaml"), DiffWaveRecipe)


def test_the_vocode_command_takes_a_refiner_and_chunks_exactly(tmp_path):
    import soundfile as sf

    from diffwave.audio import save_audio
    from diffwave.cli import main

    torch.manual_seed(0)
    export = _export(tmp_path, _perturbed(GriffinLimRefiner(_small())).eval())
    wav = save_audio(tmp_path / "in" / "clip.wav", _speechlike(1.5), SR)
    assert main(["vocode", "--model", str(export), str(wav), "--out", str(tmp_path / "whole.wav")]) == 0
    assert main(["vocode", "--model", str(export), str(wav), "--out", str(tmp_path / "chunked"),
                 "--max-frames", "40"]) == 0
    whole, sr = sf.read(tmp_path / "whole.wav")
    chunked, _ = sf.read(tmp_path / "chunked" / "clip.wav")
    assert sr == SR and whole.shape == chunked.shape == (int(1.5 * SR),)
    assert abs(whole - chunked).max() <= 2 / 32768  # equal up to 16-bit rounding


def test_a_resumed_run_may_change_its_start_but_not_its_network(tmp_path):
    from diffcore.checkpoint import find_latest, load_checkpoint
    from diffwave.refiner_train import read_record, train_refiner

    run = tmp_path / "run"
    train_refiner(run, _budgeted(tmp_path), cpu_minutes=0.01, with_dnsmos=False, log=lambda s: None)
    train_refiner(run, _budgeted(tmp_path, "model.gl_iters=2"), cpu_minutes=0.01, with_dnsmos=False,
                  log=lambda s: None)
    state = load_checkpoint(find_latest(run))
    assert state["config"]["model"]["gl_iters"] == 2
    assert read_record(run)[1][-1]["start_changed"] == {"gl_iters": 2}
    with pytest.raises(CheckpointError, match=r"different model config \(differs in: dim\)"):
        train_refiner(run, _budgeted(tmp_path, "model.gl_iters=2", "model.dim=48"), cpu_minutes=0.01,
                      log=lambda s: None)


def test_a_cpu_budgeted_run_stops_resumes_exactly_and_writes_its_record(tmp_path):
    """The driver over the engine: each call stops on its CPU budget, a second call resumes, and the weights equal
    those of one uninterrupted run to the same step; the record has step 0 and a line at every multiple of the
    evaluation period of the run's CPU time, the periods join up, and best.pt holds the last new best."""
    from diffcore.checkpoint import find_latest, load_checkpoint
    from diffwave.refiner_task import RefinerTask
    from diffwave.refiner_train import read_record, train_refiner

    recipe = _budgeted(tmp_path)
    task = RefinerTask(recipe)
    assert len(task.validation_files) == 1 and not set(task.validation_files) & set(task.train_files)
    run, quiet = tmp_path / "run", dict(with_dnsmos=False, log=lambda s: None)
    train_refiner(run, recipe, cpu_minutes=0.01, eval_every_minutes=0.004, **quiet)
    first = load_checkpoint(find_latest(run))
    assert 0 < first["step"] and first["cpu_seconds"] >= 0.6
    train_refiner(run, recipe, cpu_minutes=0.01, eval_every_minutes=0.004, **quiet)
    last = load_checkpoint(find_latest(run))
    assert last["step"] > first["step"] and last["cpu_seconds"] >= 1.2
    # one uninterrupted fit (the evaluation period is longer than the run) to the same step
    straight = tmp_path / "straight"
    train_refiner(straight, _budgeted(tmp_path, f"train.max_steps={last['step']}"), cpu_minutes=10.0,
                  eval_every_minutes=100.0, **quiet)
    other = load_checkpoint(find_latest(straight))
    assert other["step"] == last["step"]
    for k, v in last["model"].items():
        assert torch.equal(v, other["model"][k]), k
    for k, v in last["ema"]["shadow"].items():
        assert torch.equal(v, other["ema"]["shadow"][k]), k
    rows, periods = read_record(run)
    assert rows[0]["step"] == 0 and rows[0]["cpu_minutes"] < 1e-3
    marks = [r["cpu_minutes"] for r in rows[1:]]
    assert len(marks) == 5  # 0.004, 0.008, 0.012, 0.016, 0.020 CPU minutes of the run
    assert all(m >= 0.004 * (i + 1) for i, m in enumerate(marks)) and marks == sorted(marks)
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    for r in rows:  # both sets scored, the baseline beside the refiner on the same clips at every line
        assert math.isfinite(r["val"]["refiner"]["pesq_wb"]) and math.isfinite(r["heldout"]["refiner"]["stoi"])
        assert r["heldout"]["griffinlim"] == rows[0]["heldout"]["griffinlim"]
    assert [(p["start_step"], p["end_step"]) for p in periods] == [(0, first["step"]), (first["step"], last["step"])]
    assert periods[-1]["end_cpu_minutes"] == pytest.approx(last["cpu_seconds"] / 60)
    best = load_checkpoint(run / "best.pt")
    assert rows[0]["best"] and best["step"] == [r["step"] for r in rows if r.get("best")][-1]
    assert best["val"]["refiner"]["pesq_wb"] == max(r["val"]["refiner"]["pesq_wb"] for r in rows)


def test_sigterm_while_the_driver_scores_stops_it_with_its_period_written(tmp_path, monkeypatch):
    """Between the engine's fits (while scoring) SIGTERM stops the driver as it stops the engine (exit status 143),
    after the checkpoint of the step it scores, with the period's line written and the handler given back."""
    import os
    import signal

    import diffwave.refiner_train as rt
    from diffcore.checkpoint import find_latest, load_checkpoint

    real, calls = rt.score_refiner, []

    def score(model, files, **kw):
        calls.append(len(files))
        if len(calls) == 3:  # the first scoring after training (step 0 scored the validation and held-out sets)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(model, files, **kw)

    monkeypatch.setattr(rt, "score_refiner", score)
    before = signal.getsignal(signal.SIGTERM)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        rt.train_refiner(run, _budgeted(tmp_path), cpu_minutes=0.02, eval_every_minutes=0.004, with_dnsmos=False,
                         log=lambda s: None)
    assert stopped.value.code == 143 and signal.getsignal(signal.SIGTERM) is before
    saved = load_checkpoint(find_latest(run))
    rows, periods = rt.read_record(run)
    assert [r["step"] for r in rows] == [0] and saved["step"] > 0
    assert periods == [{**periods[0], "start_step": 0, "end_step": saved["step"]}]


def test_the_shipped_refiner_loads_by_name_and_beats_griffin_lim_on_the_shipped_clips():
    """``ljspeech-refiner``, loaded by name offline, vocodes the shipped speech clips (never trained on) with a
    higher PESQ-WB and a lower MR-STFT distance than Griffin-Lim (64 iterations) on the same mels, STOI at least
    0.95, and its card's held-out figures in its config; the file is at most 8 MiB."""
    import json
    import warnings

    import diffwave.api as dw
    from diffwave.audio import load_audio
    from diffwave.metrics import evaluate_resynthesis
    from diffwave.pretrained import SHIPPED
    from diffwave.speech import speech_files

    if "ljspeech-refiner" not in dw.available_models():
        pytest.skip("ljspeech-refiner does not ship with this copy of the package")
    folder = SHIPPED.folder_of("ljspeech-refiner")
    assert (folder / "model.safetensors").stat().st_size <= 8 * 1024 * 1024
    assert (folder / "MODEL_CARD.md").is_file()
    prov = json.loads((folder / "config.json").read_text())["provenance"]
    assert prov["name"] == "ljspeech-refiner" and prov["step"] > 0 and prov["cpu_minutes"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        voc = dw.load("ljspeech-refiner", "cpu")
    assert isinstance(voc, dw.RefinerVocoder)
    pairs, base = [], []
    for f in speech_files():
        ref, _ = load_audio(f, voc.sample_rate)
        mel = voc.mel(ref)
        pairs.append((ref, voc.vocode(mel)[: ref.shape[-1]]))
        base.append((ref, griffin_lim_from_mel(mel, voc.config.mel, n_iter=64)))
    means = evaluate_resynthesis(pairs, voc.sample_rate, base, system="refiner", with_dnsmos=False).to_dict()["means"]
    ours, gl = means["refiner"], means["Griffin-Lim"]
    assert ours["pesq_wb"] > gl["pesq_wb"] and ours["mr_stft"] < gl["mr_stft"]
    assert ours["stoi"] >= 0.95
