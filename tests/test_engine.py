"""The training engine on CPU with the toy task: exact resume (also after SIGTERM), NaN guard, precisions,
gradient accumulation, LR schedule, logs, hooks and checkpoint-failure policy."""

import math
import os
import signal

import numpy as np
import pytest
import soundfile
import torch
import yaml
from PIL import Image

from diffcore.checkpoint import CheckpointError, find_latest, load_checkpoint
from diffcore.config import ConfigError
from diffcore.ema import unwrap_model
from diffcore.train import TrainConfig, Trainer, TrainingError, lr_at, read_log
from diffcore.train.toy import ToyTask


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=6, batch_size=8, lr=1e-2, num_workers=0, log_every=1, ckpt_every=0, device="cpu",
                progress=False, tensorboard=False, ema_decay=0.9, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def params(module):
    return {k: v.detach().clone() for k, v in unwrap_model(module).named_parameters()}


def assert_same_state(a: Trainer, b: Trainer):
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), f"model {k}"
    for (k, x), (_, y) in zip(a.ema.module.state_dict().items(), b.ema.module.state_dict().items()):
        assert torch.equal(x, y), f"ema {k}"
    assert a.ema.num_updates == b.ema.num_updates
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), f"optimizer {i} {k}"


# ------------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_gives_identical_weights(tmp_path, num_workers):
    # 20 examples, global batch 8: 2 batches an epoch, so the resume point (step 3) is mid-epoch, and a
    # shuffling sampler, accumulation, warm-up + cosine schedule and clipping all have to resume exactly.
    # With worker processes, batches prefetched but not yet trained on must not count as consumed.
    c = cfg(max_steps=6, grad_accum=2, warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1, grad_clip=0.5,
            num_workers=num_workers)
    straight = Trainer(ToyTask(n=20), c, tmp_path / "straight")
    straight.fit()
    first = Trainer(ToyTask(n=20), c, tmp_path / "resumed")
    s1 = first.fit(until=3)
    assert s1["step"] == 3 and not s1["completed"]
    torch.manual_seed(1234)  # the resumed run must not depend on the RNG state it starts from
    second = Trainer(ToyTask(n=20), c, tmp_path / "resumed")
    s2 = second.fit()
    assert s2["resumed_from"].endswith("step_00000003.pt") and s2["completed"] and s2["step"] == 6
    assert_same_state(straight, second)
    losses_a = {r["step"]: r["loss"] for r in read_log(tmp_path / "straight")}
    losses_b = {r["step"]: r["loss"] for r in read_log(tmp_path / "resumed")}
    assert losses_a == losses_b  # same batches, same noise, step by step


class SignalTask(ToyTask):
    """Sends ``sig`` to its own process during loss call number ``at``."""

    def __init__(self, at: int, sig: int, **kw):
        super().__init__(**kw)
        self.at, self.sig, self.calls = at, sig, 0

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.sig)
        return super().loss(model, batch)


def test_sigterm_saves_a_checkpoint_and_resume_is_exact(tmp_path):
    c = cfg(max_steps=8, ckpt_every=100)
    straight = Trainer(ToyTask(n=20), c, tmp_path / "straight")
    straight.fit()
    before = signal.getsignal(signal.SIGTERM)
    interrupted = Trainer(SignalTask(5, signal.SIGTERM, n=20), c, tmp_path / "run")
    with pytest.raises(SystemExit) as exc:
        interrupted.fit()
    assert exc.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    state = load_checkpoint(find_latest(tmp_path / "run"))
    assert state["step"] == 5  # the step in flight was finished, then saved
    assert [e["signal"] for e in read_log(tmp_path / "run", "stopped")] == ["SIGTERM"]
    resumed = Trainer(ToyTask(n=20), c, tmp_path / "run")
    resumed.fit()
    assert_same_state(straight, resumed)


def test_sigint_saves_a_checkpoint_then_raises_keyboard_interrupt(tmp_path):
    trainer = Trainer(SignalTask(2, signal.SIGINT), cfg(max_steps=5), tmp_path)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(find_latest(tmp_path))["step"] == 2


class CrashTask(ToyTask):
    def __init__(self, at: int, **kw):
        super().__init__(**kw)
        self.at, self.calls = at, 0

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("simulated crash")
        return super().loss(model, batch)


def test_crash_then_resume_from_the_last_checkpoint_keeps_one_log_record_per_step(tmp_path):
    c = cfg(max_steps=6, ckpt_every=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(CrashTask(4), c, tmp_path).fit()  # steps 1-3 logged, last checkpoint at step 2
    summary = Trainer(ToyTask(), c, tmp_path).fit()
    assert summary["resumed_from"].endswith("step_00000002.pt")
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in read_log(tmp_path, "resume")] == [2]
    straight = Trainer(ToyTask(), c, tmp_path / "straight")
    straight.fit()
    # the kept records are those of the run that went on, equal to an uninterrupted run's
    assert [r["loss"] for r in read_log(tmp_path)] == [r["loss"] for r in read_log(tmp_path / "straight")]


def test_finished_run_is_not_trained_again(tmp_path):
    Trainer(ToyTask(), cfg(max_steps=2), tmp_path).fit()
    again = Trainer(ToyTask(), cfg(max_steps=2), tmp_path)
    summary = again.fit()
    assert summary["step"] == 2 and summary["completed"] and summary["checkpoint"] is None
    assert len(read_log(tmp_path, "checkpoint")) == 1


def test_a_cpu_time_budget_stops_the_run_adds_up_over_resumes_and_resumes_exactly(tmp_path):
    c = cfg(max_steps=100_000)  # far beyond what the budgets allow: only the CPU clock can stop these runs
    first = Trainer(ToyTask(), c, tmp_path / "budget").fit(until_cpu_minutes=0.002)
    assert 0 < first["step"] < c.max_steps and not first["completed"]
    assert first["cpu_seconds"] >= 0.12
    saved = load_checkpoint(first["checkpoint"])
    assert saved["step"] == first["step"] and saved["cpu_seconds"] == first["cpu_seconds"]
    # the budget is the run's total: a resume goes on from the CPU time its checkpoint holds
    second = Trainer(ToyTask(), c, tmp_path / "budget").fit(until_cpu_minutes=0.004)
    assert second["resumed_from"] == first["checkpoint"] and second["step"] > first["step"]
    assert second["cpu_seconds"] >= 0.24 and not second["completed"]
    # a run already past its budget trains no step and writes nothing
    again = Trainer(ToyTask(), c, tmp_path / "budget").fit(until_cpu_minutes=0.001)
    assert again["step"] == second["step"] and again["checkpoint"] is None
    assert again["cpu_seconds"] == pytest.approx(load_checkpoint(second["checkpoint"])["cpu_seconds"], abs=0.01)
    # stopping on the clock and resuming gives the weights of one run to the same step
    straight = Trainer(ToyTask(), c, tmp_path / "straight")
    straight.fit(until=second["step"])
    resumed = Trainer(ToyTask(), c, tmp_path / "budget")
    resumed.fit(until=second["step"])
    assert_same_state(straight, resumed)
    with pytest.raises(ConfigError, match="until_cpu_minutes"):
        Trainer(ToyTask(), c, tmp_path / "nan").fit(until_cpu_minutes=float("nan"))


def test_resume_with_a_different_model_is_refused(tmp_path):
    Trainer(ToyTask(hidden=32), cfg(max_steps=1), tmp_path).fit()
    with pytest.raises(CheckpointError, match=r"different model config \(differs in: hidden\)"):
        Trainer(ToyTask(hidden=16), cfg(max_steps=2), tmp_path).fit()


# ------------------------------------------------------------------------------------------------ NaN guard


class NanTask(ToyTask):
    """Returns NaN losses on the listed calls (1-based) and records the parameters seen at every call."""

    def __init__(self, nan_calls, **kw):
        super().__init__(**kw)
        self.nan_calls, self.calls, self.seen = nan_calls, 0, []

    def loss(self, model, batch):
        self.calls += 1
        self.seen.append(params(model))
        out = super().loss(model, batch)
        return out * float("nan") if self.nan_calls(self.calls) else out


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_losses_are_skipped_and_counted(tmp_path):
    task = NanTask(lambda n: n in (3, 4))
    trainer = Trainer(task, cfg(max_steps=6, max_nonfinite=3), tmp_path)
    summary = trainer.fit()
    assert summary["step"] == 6 and summary["nonfinite_count"] == 2
    assert task.calls == 8  # 6 good steps + 2 skipped
    # calls 3 and 4 changed nothing: the weights seen at calls 3, 4 and 5 are the same, call 6 sees an update
    assert _equal(task.seen[2], task.seen[3]) and _equal(task.seen[3], task.seen[4])
    assert not _equal(task.seen[4], task.seen[5])
    assert trainer.ema.num_updates == 6
    events = read_log(tmp_path, "nonfinite")
    assert [(e["step"], e["in_a_row"]) for e in events] == [(2, 1), (2, 2)]
    assert read_log(tmp_path)[-1]["nonfinite_count"] == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_too_many_nonfinite_losses_stop_with_a_checkpoint_of_the_last_good_state(tmp_path):
    task = NanTask(lambda n: n >= 4)
    trainer = Trainer(task, cfg(max_steps=10, max_nonfinite=3), tmp_path)
    with pytest.raises(TrainingError, match=r"3 non-finite losses in a row at step 3 .*step_00000003\.pt"):
        trainer.fit()
    state = load_checkpoint(find_latest(tmp_path))
    assert state["step"] == 3 and state["ema"]["num_updates"] == 3
    good = task.seen[3]  # the weights after step 3, before the first NaN
    for k, v in good.items():
        assert torch.equal(state["model"][k], v), k


def test_loss_must_be_per_example(tmp_path):
    class Scalar(ToyTask):
        def loss(self, model, batch):
            return super().loss(model, batch).mean()

    with pytest.raises(TrainingError, match=r"per-example loss of shape \[B\], got \(\)"):
        Trainer(Scalar(), cfg(max_steps=1), tmp_path).fit()


# ------------------------------------------------------------------------------------------------ precision


class ProbeTask(ToyTask):
    """Records the autocast state and the dtype of the network output at every loss call."""

    def __init__(self, **kw):
        super().__init__(deterministic=True, **kw)
        self.seen = []

    def loss(self, model, batch):
        x = batch["x"]
        out = model(x, torch.zeros(len(x), dtype=torch.long))
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), out.dtype))
        return super().loss(model, batch)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_on_cpu(tmp_path, precision, dtype):
    task = ProbeTask()
    trainer = Trainer(task, cfg(max_steps=30, lr=1e-2, precision=precision, log_every=10), tmp_path)
    summary = trainer.fit()
    assert summary["precision"] == precision
    assert set(task.seen) == {(True, dtype, dtype)}  # the forward pass ran under autocast
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32
    assert all(p.dtype == torch.float32 for p in trainer.ema.module.parameters())
    losses = [r["loss"] for r in read_log(tmp_path)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.7 * losses[0]
    state = load_checkpoint(find_latest(tmp_path))
    if precision == "fp16":
        assert state["scaler"]["scale"] == trainer.scaler.get_scale() > 0
        assert "loss_scale" in read_log(tmp_path)[-1]
    else:
        assert state["scaler"] is None


def test_auto_precision_is_fp32_on_cpu(tmp_path):
    task = ProbeTask()
    summary = Trainer(task, cfg(max_steps=1, precision="auto"), tmp_path).fit()
    assert summary["precision"] == "fp32" and task.seen[0][0] is False and task.seen[0][2] == torch.float32


# ------------------------------------------------------------------------------------------------ optimisation


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    results = []
    for accum in (1, 4):
        c = cfg(max_steps=4, grad_accum=accum, grad_clip=None)
        t = Trainer(ToyTask(deterministic=True), c, tmp_path / str(accum))
        t.fit()
        results.append(params(t.model))
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-5, atol=1e-6)


def test_lr_schedule_closed_forms():
    c = cfg(lr=1.0, max_steps=110, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1)  # (s + 1) / W
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0)  # the cosine starts at the peak ...
    assert lr_at(60, c) == pytest.approx(0.1 + 0.9 * 0.5)  # ... is half-way at mid-point ...
    assert lr_at(110, c) == pytest.approx(0.1)  # ... and ends at min_lr_ratio
    lin = c.replace(lr_schedule="linear")
    assert lr_at(35, lin) == pytest.approx(0.1 + 0.9 * 0.75)
    assert lr_at(500, c.replace(lr_schedule="constant")) == 1.0


def test_logged_lr_follows_the_schedule(tmp_path):
    c = cfg(max_steps=5, warmup_steps=2, lr_schedule="linear", lr=1e-3)
    Trainer(ToyTask(), c, tmp_path).fit()
    for rec in read_log(tmp_path):
        assert rec["lr"] == pytest.approx(lr_at(rec["step"] - 1, c))


# ------------------------------------------------------------------------------------------------ logs and hooks


class HookTask(ToyTask):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.val_calls = []
        self.wave = np.sin(np.linspace(0, 40 * np.pi, 800)).astype(np.float32) * 0.5
        self.hwc = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)

    def validate(self, ema_model, step, logger):
        self.val_calls.append((step, ema_model, ema_model.training, torch.is_grad_enabled()))
        return {"mse": float(step)}

    def sample(self, ema_model, step, logger):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        logger.audio("audio/tone", torch.from_numpy(self.wave), 8000, step)
        logger.image("grid", torch.full((3, 2, 2), 0.5), step)
        logger.image("raw", torch.from_numpy(self.hwc), step)
        fig = plt.figure()
        plt.plot([0, 1], [1, 0])
        logger.figure("curve", fig, step)


def test_logs_hooks_and_media(tmp_path):
    task = HookTask()
    trainer = Trainer(task, cfg(max_steps=6, log_every=2, val_every=2, sample_every=3, tensorboard=True), tmp_path)
    trainer.fit()
    scalars = read_log(tmp_path)
    train_recs = [r for r in scalars if "loss" in r]
    assert [r["step"] for r in train_recs] == [2, 4, 6]
    for r in train_recs:
        assert {"loss", "grad_norm", "lr", "samples_per_s", "steps_per_s", "nonfinite_count"} <= set(r)
        assert r["samples_per_s"] == pytest.approx(8 * r["steps_per_s"])
    assert [(r["step"], r["val/mse"]) for r in scalars if "val/mse" in r] == [(2, 2.0), (4, 4.0), (6, 6.0)]
    # hooks get the EMA module, in eval mode, without autograd
    assert [c[0] for c in task.val_calls] == [2, 4, 6]
    assert all(m is trainer.ema.module and not training and not grad for _, m, training, grad in task.val_calls)
    # media files
    samples = tmp_path / "samples"
    wav, sr = soundfile.read(samples / "audio_tone_step00000003.wav", dtype="float32")
    assert sr == 8000 and np.abs(wav - task.wave).max() <= 1.0 / 32767 + 1e-6
    assert np.array_equal(np.asarray(Image.open(samples / "raw_step00000006.png")), task.hwc)
    assert np.all(np.asarray(Image.open(samples / "grid_step00000003.png")) == 128)
    assert (samples / "curve_step00000006.png").stat().st_size > 0
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == task.config


# ------------------------------------------------------------------------------------------------ checkpoint failures


def test_failed_periodic_checkpoint_is_reported_and_training_goes_on(tmp_path, monkeypatch, capsys):
    import diffcore.train.engine as engine

    real = engine.save_checkpoint

    def flaky(state, folder, step, keep_last):
        if step == 2:
            raise CheckpointError(f"could not write {folder}/step_00000002.pt: OSError: [Errno 28] No space left")
        return real(state, folder, step, keep_last)

    monkeypatch.setattr(engine, "save_checkpoint", flaky)
    summary = Trainer(ToyTask(), cfg(max_steps=4, ckpt_every=2), tmp_path).fit()
    assert summary["step"] == 4 and summary["checkpoint"].endswith("step_00000004.pt")
    failed = read_log(tmp_path, "checkpoint_failed")
    assert [e["step"] for e in failed] == [2] and "No space left" in failed[0]["error"]
    assert "training goes on" in capsys.readouterr().err

    def always_fails(state, folder, step, keep_last):
        raise CheckpointError("could not write: disk full")

    monkeypatch.setattr(engine, "save_checkpoint", always_fails)
    with pytest.raises(CheckpointError, match="disk full"):  # the final checkpoint may not be lost silently
        Trainer(ToyTask(), cfg(max_steps=2), tmp_path / "final").fit()


# ------------------------------------------------------------------------------------------------ configuration


def test_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size \(6\) must be divisible by train.grad_accum \(4\)"):
        cfg(batch_size=6, grad_accum=4)
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        Trainer(ToyTask(n=4), cfg(batch_size=8), tmp_path).fit()
    with pytest.raises(ConfigError, match="not plain data"):
        task = ToyTask()
        task.config["path"] = tmp_path
        Trainer(task, cfg(), tmp_path)


# ------------------------------------------------------------------------------------------------ device


def test_the_engine_and_the_commands_resolve_devices_with_the_one_function(tmp_path, monkeypatch):
    import diffcore.device
    import diffcore.train.engine as engine
    import diffcore.utils

    assert diffcore.device.resolve_device is engine.resolve_device  # one home: diffcore.device
    assert not hasattr(diffcore.utils, "resolve_device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    with pytest.raises(ConfigError, match=r"train.device 'cuda' was asked for but no CUDA GPU is available"):
        Trainer(ToyTask(), cfg(device="cuda"), tmp_path / "run").fit()
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match=r"unknown device 'tpu' \(valid: auto, cpu, cuda, cuda:N, mps\)"):
        diffcore.device.resolve_device("tpu")
    assert diffcore.device.resolve_device("auto") == torch.device("cpu")


# ------------------------------------------------------------------------------------------------ structure, run-time switches


class RuntimeToy(ToyTask):
    """The toy model with the optional ``set_runtime`` of the model contract; records every call."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.runtime_calls = []

    def build_model(self):
        model = super().build_model()
        calls = self.runtime_calls

        def set_runtime(*, channels_last=None, gradient_checkpointing=None):
            calls.append({"channels_last": channels_last, "gradient_checkpointing": gradient_checkpointing})

        model.set_runtime = set_runtime
        return model


def test_every_attribute_of_the_trainer_is_set_in_init(tmp_path):
    trainer = Trainer(ToyTask(), cfg(max_steps=2), tmp_path)
    before = set(vars(trainer))
    trainer.fit()
    assert set(vars(trainer)) == before
    assert trainer.model is trainer.update.model and trainer.ema is trainer.update.ema
    assert trainer.data.position() == {"epoch": 0, "samples": 16}  # 2 steps of a global batch of 8


def test_run_time_switches_reach_the_model_and_may_change_on_resume(tmp_path):
    task = RuntimeToy()
    Trainer(task, cfg(max_steps=2), tmp_path).fit()
    assert task.runtime_calls == [{"channels_last": None, "gradient_checkpointing": False}]  # None: model default
    task = RuntimeToy()
    summary = Trainer(task, cfg(max_steps=4, channels_last=True, gradient_checkpointing=True), tmp_path).fit()
    assert summary["resumed_from"].endswith("step_00000002.pt") and summary["step"] == 4
    assert task.runtime_calls == [{"channels_last": True, "gradient_checkpointing": True}]
    changed = {e["key"] for e in read_log(tmp_path, "config_changed")}
    assert {"train.channels_last", "train.gradient_checkpointing"} <= changed
    # a model without set_runtime cannot honour a switch that is on: refused, not silently ignored
    with pytest.raises(ConfigError, match=r"train.channels_last is on but ToyDenoiser has no set_runtime"):
        Trainer(ToyTask(), cfg(max_steps=2, channels_last=True), tmp_path / "other").fit()
    assert TrainConfig.from_dict(cfg(channels_last=False).to_dict()).channels_last is False
