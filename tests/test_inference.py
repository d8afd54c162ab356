"""The inference speed-ups (diffcore.inference) agree with the eager reference path, within stated tolerances; the
benchmark helpers measure right.

Tolerances (float32 unless said):
- fused gate / residual expressions: bit-identical to the formulas of Figure 2;
- channels-last path and conditioner cache: |Δ| ≤ 1e-5 · max|reference| (different convolution kernels round
  differently; nothing else changes);
- InferenceRunner with every lever off: bit-identical to calling the model;
- bf16 autocast through the runner, 6-step sampling of the tiny model: waveform SNR ≥ 30 dB and log-mel L1 ≤ 0.02
  against the float32 output for the same noise (measured: about 47 dB and 0.002).
torch.compile is left to the benchmarks (they record compiled-vs-eager deviations): compiling even the tiny model
takes longer on 2 CPU cores than this whole file.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import Budget, Report, Row, is_oom, largest_batch, snr_db, time_call  # noqa: E402
from diffcore.config import ConfigError  # noqa: E402
import diffcore.inference as inference_mod  # noqa: E402
from diffcore.inference import (  # noqa: E402
    CUDAGraphCallable,
    InferenceConfig,
    InferenceRunner,
    inference_context,
    tune_cpu_allocator,
)
from diffcore.precision import cpu_has_bf16, resolve_precision  # noqa: E402
from diffcore.denoiser import VPDenoiser  # noqa: E402
from diffcore.discretization import fast_schedule  # noqa: E402
from diffcore.samplers import ddpm_sample  # noqa: E402
from diffwave.config import DiffWaveConfig  # noqa: E402
from diffwave.metrics import log_mel_l1  # noqa: E402
from diffwave.model import DiffWave  # noqa: E402
from diffwave.runtime import ConditionCache, gated_tanh, residual_and_skip  # noqa: E402


def tiny_model(seed: int = 0) -> DiffWave:
    torch.manual_seed(seed)
    model = DiffWave(DiffWaveConfig.preset("tiny")).eval()
    # the output layer starts at zero; give it weights so that outputs depend on the whole network
    torch.nn.init.kaiming_normal_(model.output_projection.weight)
    return model


def inputs(batch: int = 2, frames: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    mel = torch.rand(batch, 80, frames, generator=g)
    x = torch.randn(batch, frames * 256, generator=g)
    return x, mel


def close(a: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> bool:
    return float((a - ref).abs().max()) <= rel * float(ref.abs().max())


# --------------------------------------------------------------------------------------------------------------
# The network's channels-last path and conditioner cache


def test_fused_gate_and_residual_are_the_formulas_of_figure_2_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    y, c = torch.randn(3, 8, 50, generator=g), torch.randn(3, 8, 50, generator=g)
    x = torch.randn(3, 4, 50, generator=g)
    z = y + c
    assert torch.equal(gated_tanh(y, c), torch.sigmoid(y[:, :4] + c[:, :4]) * torch.tanh(y[:, 4:] + c[:, 4:]))
    # adding before or after the split is the same sum; only the vectorised vs strided sigmoid/tanh loops may
    # round the last bit differently
    assert torch.allclose(gated_tanh(y, c), torch.sigmoid(z[:, :4]) * torch.tanh(z[:, 4:]), rtol=0, atol=1e-6)
    assert torch.equal(gated_tanh(y), torch.sigmoid(y[:, :4]) * torch.tanh(y[:, 4:]))
    h, skip = residual_and_skip(x, y)
    assert torch.equal(h, (x + y[:, :4]) / math.sqrt(2.0))
    assert torch.equal(skip, y[:, 4:])


@pytest.mark.parametrize("fractional", [False, True])
def test_channels_last_path_matches_the_default_path(fractional):
    model = tiny_model()
    x, mel = inputs()
    t = torch.tensor([3.25, 40.5]) if fractional else torch.tensor([0, 49])
    with torch.no_grad():
        ref = model(x, t, mel)
        model.channels_last = True
        cl = model(x, t, mel)
        cl_3d = model(x.unsqueeze(1), t, mel)
    assert cl.shape == ref.shape and cl_3d.shape == (2, 1, x.shape[-1])
    assert close(cl, ref) and close(cl_3d.squeeze(1), ref)
    assert not torch.equal(ref, torch.zeros_like(ref))


def test_channels_last_path_trains_the_same_parameters_with_the_same_gradients():
    model = tiny_model()
    x, mel = inputs()
    t = torch.tensor([5, 17])
    model.zero_grad()
    model(x, t, mel).pow(2).mean().backward()
    ref = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    model.channels_last = True
    model(x, t, mel).pow(2).mean().backward()
    assert set(model.state_dict()) == set(DiffWave(model.config).state_dict())
    for k, p in model.named_parameters():
        assert close(p.grad, ref[k], 1e-4), k


@pytest.mark.parametrize("channels_last", [False, True])
def test_condition_cache_gives_the_output_of_the_mel(channels_last):
    model = tiny_model()
    model.channels_last = channels_last
    x, mel = inputs()
    t = torch.tensor([2.5, 30.0])
    with torch.no_grad():
        ref = model(x, t, mel)
        cache = model.prepare_condition(mel)
        out = model(x, t, cache)
    assert isinstance(cache, ConditionCache) and len(cache.layers) == model.config.residual_layers
    assert cache.layers[0].shape == (2, 2 * model.config.residual_channels, 1, x.shape[-1])
    assert cache.layers[0].is_contiguous(memory_format=torch.channels_last)
    assert close(out, ref)


def test_condition_cache_is_checked_against_the_input():
    model = tiny_model()
    x, mel = inputs(batch=2, frames=8)
    cache = model.prepare_condition(mel)
    with pytest.raises(ValueError, match="batch 2 × 2048 samples"):
        model(x[:1], torch.tensor([1]), cache)
    with pytest.raises(ValueError, match="holds 9 layers"):
        model(x, torch.tensor([1, 2]), ConditionCache(cache.layers[:-1], 8))
    with pytest.raises(ValueError, match="mel-conditioned"):
        DiffWave(DiffWaveConfig.preset("tiny", conditional=False, mel=None)).prepare_condition(mel)


# --------------------------------------------------------------------------------------------------------------
# InferenceRunner


def sample(model, cond, length: int = 2048, batch: int = 2):
    cfg = DiffWaveConfig.preset("tiny")
    device = cond.layers[0].device if isinstance(cond, ConditionCache) else cond.device
    schedule = cfg.diffusion.build()
    return ddpm_sample(VPDenoiser(model, schedule), (batch, length), fast_schedule(schedule, cfg.inference_betas),
                       variance="posterior", cond=cond, device=device, generator=torch.Generator(device).manual_seed(7))


def test_reference_config_is_the_eager_model_bit_for_bit():
    model = tiny_model()
    _, mel = inputs()
    with torch.no_grad():
        ref = sample(model, mel)
    runner = InferenceRunner(model, "cpu", InferenceConfig.reference())
    assert runner.describe()["precision"] == "fp32" and not runner.compiled and not runner.cache_condition
    with runner.context():
        out = sample(runner, runner.prepare_condition(mel))
    assert torch.equal(out, ref)


def test_fp32_speed_ups_sample_what_the_eager_path_samples():
    model = tiny_model()
    _, mel = inputs()
    with torch.no_grad():
        ref = sample(model, mel)
    runner = InferenceRunner(model, "cpu", InferenceConfig(precision="fp32", compile="off", condition_cache="on"))
    assert runner.cache_condition and model.channels_last
    with runner.context():
        cond = runner.prepare_condition(mel)
        out = sample(runner, cond)
    assert isinstance(cond, ConditionCache)
    assert close(out, ref)


def test_bf16_sampling_stays_within_the_stated_deviation():
    model = tiny_model()
    _, mel = inputs(batch=1, frames=16)
    with torch.no_grad():
        ref = sample(model, mel, length=16 * 256, batch=1)[0]
    runner = InferenceRunner(model, "cpu", InferenceConfig(precision="bf16", compile="off", condition_cache="on"))
    with runner.context():
        out = sample(runner, runner.prepare_condition(mel), length=16 * 256, batch=1)[0]
    assert out.dtype == torch.float32  # the sampler's state stays float32; only the network runs in bf16
    snr = snr_db(ref, out)
    l1 = log_mel_l1(ref, out, 22050)
    assert snr >= 30.0, snr
    assert 0.0 < l1 <= 0.02, l1


def test_auto_precision_follows_the_hardware():
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_bf16() else "fp32")
    assert resolve_precision("fp16", "cpu") == "fp16"
    if torch.cuda.is_available():
        assert resolve_precision("auto", "cuda") == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


def test_one_precision_rule_for_training_and_inference(monkeypatch):
    """diffcore.precision's table: auto differs between training and inference only on a CPU with native bf16."""
    import diffcore.precision as precision
    import diffcore.train.engine as engine

    for native in (False, True):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda native=native: native)
        assert resolve_precision("auto", "cpu", purpose="inference") == ("bf16" if native else "fp32")
        assert resolve_precision("auto", "cpu", purpose="train") == "fp32"
    for bf16 in (False, True):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        for purpose in ("train", "inference"):
            assert resolve_precision("auto", "cuda", purpose=purpose) == ("bf16" if bf16 else "fp32")
    assert resolve_precision("bf16", "cpu", purpose="train") == "bf16"  # explicit choices are kept
    with pytest.raises(ValueError):
        resolve_precision("fp8", "cpu")
    assert engine.resolve_precision is resolve_precision and inference_mod.resolve_precision is resolve_precision


def test_inference_context_sets_and_restores_its_state():
    before = torch.get_num_threads()
    with inference_context("cpu", "bf16", threads=1):
        assert torch.is_inference_mode_enabled()
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.get_num_threads() == 1
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    assert torch.get_num_threads() == before and not torch.is_inference_mode_enabled()


def test_inference_config_round_trips_and_rejects_bad_values():
    cfg = InferenceConfig(precision="bf16", compile="on", threads=2)
    assert InferenceConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        InferenceConfig(threads=0)
    with pytest.raises(ConfigError, match="precison"):
        InferenceConfig.from_dict({"precison": "bf16"})
    with pytest.raises(ConfigError):
        InferenceConfig.from_dict({"compile": "yes"})


def test_allocator_tuning_is_opt_in(monkeypatch):
    """tune_allocator changes the whole process: off by default and in the reference, on only when asked."""
    calls = []
    monkeypatch.setattr(inference_mod, "tune_cpu_allocator", lambda: calls.append(1) or True)
    model = tiny_model()
    assert InferenceConfig().tune_allocator is False and InferenceConfig.reference().tune_allocator is False
    InferenceRunner(model, "cpu", InferenceConfig())
    assert calls == []
    InferenceRunner(model, "cpu", InferenceConfig(tune_allocator=True))
    assert calls == [1]


def test_channels_last_goes_through_set_runtime_and_is_never_silently_dropped(recwarn):
    model = tiny_model()
    runner = InferenceRunner(model, "cpu", InferenceConfig(precision="fp32"))
    assert model.channels_last and runner.describe()["channels_last"] is True
    InferenceRunner(model, "cpu", InferenceConfig.reference())
    assert not model.channels_last

    class Plain(torch.nn.Module):  # a model without the optional protocol
        def forward(self, x_t, t, cond=None):
            return x_t

    with pytest.warns(UserWarning, match="Plain has no set_runtime"):
        plain = InferenceRunner(Plain(), "cpu", InferenceConfig(precision="fp32"))
    assert plain.describe()["channels_last"] is False and not plain.cache_condition
    recwarn.clear()
    InferenceRunner(Plain(), "cpu", InferenceConfig(precision="fp32"))  # warned once per model class
    assert not [w for w in recwarn if "set_runtime" in str(w.message)]
    x = torch.randn(2, 8)
    assert torch.equal(plain.prepare_condition(x), x)  # no prepare_condition: the condition passes unchanged


def test_allocator_tuning_applies_once_and_stays_applied():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc mallopt is Linux-only")
    assert tune_cpu_allocator() is True
    assert tune_cpu_allocator() is True
    big = torch.ones(4_000_000)  # 16 MB: below the raised mmap threshold, reused from the heap
    assert float(big.sum()) == 4_000_000.0


# --------------------------------------------------------------------------------------------------------------
# CUDA graphs


def test_cuda_graph_wrapper_calls_through_where_it_cannot_capture():
    calls = []

    def fn(x, t, cond=None):
        calls.append(1)
        return x * 2 + t

    graphed = CUDAGraphCallable(fn)
    x = torch.randn(3)
    assert torch.equal(graphed(x, torch.tensor(1.0)), x * 2 + 1)
    assert graphed.num_graphs == 0 and len(calls) == 1
    with pytest.raises(ValueError):
        CUDAGraphCallable(fn, warmup=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replays_match_eager_calls():
    model = tiny_model().cuda()
    graphed = CUDAGraphCallable(model)
    x, mel = inputs()
    x, mel = x.cuda(), mel.cuda()
    with torch.inference_mode():
        for step in (3.5, 10.0, 20.25):
            t = torch.tensor([step], device="cuda")
            ref = model(x, t, cond=mel)
            out = graphed(x + 0, t, cond=mel)
            assert close(out, ref, 1e-6)
        assert graphed.num_graphs == 1
        graphed(x[:1], torch.tensor([1.0], device="cuda"), cond=mel[:1])
        assert graphed.num_graphs == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_graphed_sampling_replays_the_eager_bf16_computation_across_contexts():
    model = tiny_model().cuda()
    _, mel = inputs()
    mel = mel.cuda()
    eager = InferenceRunner(model, "cuda", InferenceConfig(precision="bf16", cuda_graphs=False))
    with eager.context():
        ref = sample(eager, mel).cpu()
    graphed = InferenceRunner(model, "cuda", InferenceConfig(precision="bf16"))
    outs = []
    for _ in range(2):  # a new autocast context each time: the graph must not keep casts cached by an old one
        with graphed.context():
            outs.append(sample(graphed, mel).cpu())
    assert graphed._fn[0].num_graphs == 1
    assert torch.equal(outs[0], outs[1])
    assert close(outs[0], ref, 1e-2)


# --------------------------------------------------------------------------------------------------------------
# Benchmark helpers


class FakeClock:
    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_time_call_warms_up_then_times_each_repeat():
    calls = []
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])
    times = time_call(lambda: calls.append(1), "cpu", warmup=2, repeats=3, clock=lambda: next(ticks))
    assert len(calls) == 5
    assert times == [1.0, 3.0, 2.0]


def test_time_call_stops_repeating_when_the_budget_runs_out():
    clock = FakeClock(10.0)
    budget = Budget(25.0, clock=clock)  # start = 10
    ticks = iter([0.0, 5.0, 100.0, 105.0])
    times = time_call(lambda: None, "cpu", warmup=0, repeats=5, budget=budget, clock=lambda: next(ticks))
    # the budget clock reads 20 (15 s left: a 2nd call fits), then 30 (5 s left < 1.2 x 5 s: stop)
    assert times == [5.0, 5.0]


def test_snr_of_a_known_error():
    ref = torch.ones(1000)
    assert snr_db(ref, ref * 1.1) == pytest.approx(20.0)
    assert snr_db(ref, ref) == math.inf


def oom_above(limit: int, log: list[int]):
    def trial(batch: int) -> None:
        log.append(batch)
        if batch > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    return trial


@pytest.mark.parametrize("limit", [16, 37, 100, 511])
def test_largest_batch_finds_the_exact_limit(limit):
    log: list[int] = []
    found = largest_batch(oom_above(limit, log), 16, cap=4096, seconds=60)
    assert found.largest_ok == limit and found.smallest_failed == limit + 1
    assert found.stopped == "bracket"
    assert log[: int(math.log2(limit // 16)) + 2] == [16 * 2**i for i in range(int(math.log2(limit // 16)) + 2)]


def test_largest_batch_stops_at_the_cap_and_the_clock_and_passes_other_errors_on():
    assert largest_batch(oom_above(10**9, []), 8, cap=100, seconds=60).largest_ok == 100
    found = largest_batch(oom_above(10**9, []), 8, cap=10**6, seconds=2.5, clock=FakeClock(1.0))
    assert found.stopped == "time" and found.largest_ok == 16  # two trials fit in the time
    found = largest_batch(oom_above(37, []), 16, cap=4096, seconds=60, resolution=0.25)
    assert found.largest_ok <= 37 < found.smallest_failed and found.smallest_failed - found.largest_ok <= 8

    def broken(batch: int) -> None:
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError):
        largest_batch(broken, 4, cap=64, seconds=60)
    assert is_oom(RuntimeError("CUDA out of memory.")) and not is_oom(RuntimeError("shape"))


def test_report_ratios_against_the_baseline_and_writes_the_record(tmp_path, capsys):
    report = Report("cpu", "cpu", argv=["run_cpu.py"])
    report.add(Row("bench", "eager fp32", 4, "steps/s", 2.0, settings={"baseline": True}))
    fast = report.add(Row("bench", "fast", 4, "steps/s", 7.0, notes={"snr_db": math.inf}))
    other_batch = report.add(Row("bench", "fast", 8, "steps/s", 9.0))
    failed = report.add(Row("bench", "broken", 4, "steps/s", None, error="RuntimeError: boom"))
    report.target("ratio", 3.0, fast.ratio, "ratio")
    assert fast.baseline == 2.0 and fast.ratio == 3.5
    assert other_batch.ratio is None and failed.ratio is None
    path = report.write(tmp_path)
    import json

    record = json.loads(path.read_text())
    assert path.name.startswith("cpu_") and path.suffix == ".json"
    assert record["device"]["torch"] == torch.__version__ and record["device"]["name"]
    assert record["date"].startswith(report.started.strftime("%Y-%m-%d"))
    rows = {(r["variant"], r["batch"]): r for r in record["results"]}
    assert rows[("fast", 4)]["ratio"] == 3.5 and rows[("fast", 4)]["batch"] == 4
    assert rows[("fast", 4)]["notes"]["snr_db"] == "inf"
    assert record["targets"][0]["met"] is True
    assert "boom" in report.table() and "MET" in report.table()


def test_every_speed_up_has_a_flag_that_removes_it():
    from benchmarks.suites import flags, forward_variants, train_variants, vocode_variants

    p = flags("x", 1.0)
    every = p.parse_args([])
    none = p.parse_args(["--no-bf16", "--no-channels-last", "--no-compile", "--no-graphs", "--no-fused-adam",
                         "--no-cache", "--no-allocator"])
    for cpu in (False, True):
        assert len(vocode_variants(every, cpu=cpu)) > 3
        assert [v.config for v in vocode_variants(none, cpu=cpu)] == [InferenceConfig.reference()]
    assert [v.name for v in train_variants(none)] == ["eager fp32 (reference)"]
    assert [v.baseline for v in forward_variants(none)] == [True]
    no_compile = p.parse_args(["--no-compile"])
    assert all(not v.compile for v in train_variants(no_compile))
    assert all(v.config.compile == "off" for v in vocode_variants(no_compile))


# --------------------------------------------------------------------------------------------------------------
# The command line: --eager (and the deprecated --no-fast)


def test_eager_flag_and_its_deprecated_spelling(tmp_path, capsys):
    import numpy as np
    import soundfile

    from diffcore.checkpoint import export, save_checkpoint
    from diffwave.cli import main

    model = tiny_model()
    state = {"format": 1, "step": 1, "model": model.state_dict(), "ema": None,
             "config": {"model": model.config.to_dict()}}
    save_checkpoint(state, tmp_path / "run" / "checkpoints", 1)
    exported = export(tmp_path / "run", tmp_path / "export")
    np.save(tmp_path / "m.npy", np.random.default_rng(0).uniform(0.2, 0.8, (80, 6)).astype(np.float32))
    outs = {}
    for flag in ("--eager", "--no-fast"):
        out = tmp_path / flag.strip("-")
        assert main(["vocode", str(tmp_path / "m.npy"), "-m", str(exported), "--out", str(out), flag]) == 0
        err = capsys.readouterr().err
        assert ("--no-fast is deprecated, use --eager" in err) == (flag == "--no-fast")
        outs[flag], _ = soundfile.read(out / "m.wav", dtype="float32")
    assert np.array_equal(outs["--eager"], outs["--no-fast"])
    assert main(["vocode", str(tmp_path / "m.npy"), "-m", str(exported), "--eager", "--compile"]) == 2
    assert "--compile and --eager exclude each other" in capsys.readouterr().err
    assert main(["vocode", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--eager" in text and "--no-fast" not in text  # the old spelling is hidden
