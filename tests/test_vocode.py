"""Chunked, batched vocoding (diffwave/sample.py), jobs over files (diffwave/jobs.py) and the Python API
(diffwave/api.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffwave.api import Vocoder, load, save_export
from diffwave.audio import load_audio, save_audio
from diffwave.config import DiffWaveConfig
from diffwave.mel import MelError, compute_mel
from diffwave.model import DiffWave
from diffwave.synth import speech_like
from diffwave.jobs import VocodeError, collect_inputs, vocode_files
from diffwave.sample import (
    ChunkedNetwork,
    chunk_weights,
    context_frames,
    plan_chunks,
    receptive_field,
    vocode_mels,
)

HOP = 256


def small_model(seed: int = 0, conditional: bool = True, **overrides) -> DiffWave:
    """A small random DiffWave whose output is not zero (the real output layer starts at zero)."""
    torch.manual_seed(seed)
    fields = dict(residual_layers=4, residual_channels=8, dilation_cycle=3, embedding_hidden=32)
    if conditional:
        cfg = DiffWaveConfig.preset("tiny", **fields, **overrides)
    else:
        cfg = DiffWaveConfig.preset("unconditional", **fields, sample_rate=8000, audio_length=1024, **overrides)
    model = DiffWave(cfg).eval()
    torch.nn.init.normal_(model.output_projection.weight, std=0.3)
    return model


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ chunk planning


@pytest.mark.parametrize("frames,max_frames,context", [(10, 16, 3), (100, 16, 3), (101, 20, 5), (64, 10, 0)])
def test_chunk_cores_partition_the_input_and_windows_add_context(frames, max_frames, context):
    chunks = plan_chunks(frames, max_frames, context)
    covered = [f for c in chunks for f in range(c.core_start, c.core_end)]
    assert covered == list(range(frames))  # cores: disjoint, in order, covering every frame
    for c in chunks:
        assert c.end - c.start <= max_frames
        assert c.start == max(0, c.core_start - context) and c.end == min(frames, c.core_end + context)


def test_chunk_plan_rejects_windows_without_a_core():
    with pytest.raises(ValueError, match="max_frames"):
        plan_chunks(100, 10, 5)


@pytest.mark.parametrize("crossfade", [0, 2, 5])
def test_chunk_weights_are_a_partition_of_unity(crossfade):
    chunks = plan_chunks(90, 24, 4)
    total = torch.zeros(90 * HOP, dtype=torch.float64)
    for k, c in enumerate(chunks):
        w = chunk_weights(chunks, k, HOP, crossfade)
        assert w.min() >= 0 and w.max() <= 1
        core = slice((c.core_start - c.start) * HOP + crossfade * HOP // 2 + 1,
                     (c.core_end - c.start) * HOP - crossfade * HOP // 2 - 1)
        assert torch.all(w[core] == 1)  # a window owns its core away from the ramps
        total[c.start * HOP : c.end * HOP] += w
    assert torch.allclose(total, torch.ones_like(total), atol=1e-12)


def test_receptive_field_is_the_sum_of_dilations():
    cfg = DiffWaveConfig.preset("base")
    assert receptive_field(cfg) == 3 * (2**10 - 1)  # 30 layers, dilations 1 ... 512 three times
    assert context_frames(cfg, crossfade=2) == -(-3069 // 256) + 2 + 2


# ------------------------------------------------------------------------------------------------ exactness


def test_chunked_network_equals_the_whole_input_network():
    model = small_model()
    mel = torch.rand(80, 70)
    x = torch.randn(1, 70 * HOP)
    t = torch.tensor([7])
    whole = model(x, t, mel.unsqueeze(0))  # the independent computation: one call on the whole input
    for max_frames in (12, 25):
        chunked = ChunkedNetwork(model, [mel], max_frames=max_frames)
        assert chunked.num_windows > 1
        torch.testing.assert_close(chunked(x, t), whole, atol=2e-5, rtol=1e-4)


def test_packed_inputs_never_see_each_other():
    model = small_model(1)
    mels = [torch.rand(80, 9), torch.rand(80, 31), torch.rand(80, 5)]
    packed = ChunkedNetwork(model, mels, max_frames=16)
    x = torch.randn(1, packed.length)
    t = torch.tensor([3.5])  # a fractional step, as fast sampling uses
    eps = packed(x, t)
    for mel, off in zip(mels, packed.offsets):
        n = mel.shape[-1] * HOP
        alone = model(x[:, off : off + n], t, mel.unsqueeze(0))
        torch.testing.assert_close(eps[:, off : off + n], alone, atol=2e-5, rtol=1e-4)


def test_chunked_vocoding_has_no_seams():
    """With the same noise, chunked vocoding equals whole-file vocoding, also right at the chunk boundaries; naive
    chunks (no context, hard cuts) differ there, which shows the comparison can see a seam."""
    model = small_model(2)
    mel = torch.rand(80, 60) * 0.8
    whole = vocode_mels(model, [mel], "fast", generator=gen(), max_frames=None)[0]
    chunked = vocode_mels(model, [mel], "fast", generator=gen(), max_frames=20)[0]
    naive = vocode_mels(model, [mel], "fast", generator=gen(), max_frames=20, context=0, crossfade=0)[0]
    assert whole.shape == chunked.shape == (60 * HOP,)
    assert whole.abs().max() > 0.1  # the model does produce a signal
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=0)
    boundaries = [c.core_start * HOP for c in plan_chunks(60, 20, 0)[1:]]
    near = torch.cat([(naive - whole)[b - 32 : b + 32] for b in boundaries])
    assert near.abs().max() > 1e-2


def test_padding_to_a_multiple_changes_only_the_length_that_is_cut_off():
    model = small_model(3)
    mels = [torch.rand(80, 13), torch.rand(80, 21)]
    outs = vocode_mels(model, mels, "fast", generator=gen(), pad_multiple=16)
    assert [o.shape[-1] for o in outs] == [13 * HOP, 21 * HOP]
    assert all(o.abs().max() <= 1 for o in outs)


# ------------------------------------------------------------------------------------------------ the Python API


def count_calls(model: torch.nn.Module) -> list[torch.Tensor]:
    steps: list[torch.Tensor] = []
    model.register_forward_hook(lambda m, args, out: steps.append(args[1].detach().clone()))
    return steps


def test_vocoder_shapes_determinism_and_schedules():
    model = small_model(4)
    voc = Vocoder(model)
    mel = torch.rand(80, 11)
    calls = count_calls(model)
    a = voc.vocode(mel, "fast", gen(5))
    assert a.shape == (11 * HOP,)
    assert len(calls) == len(model.config.inference_betas)  # one network call per fast step
    assert any(not float(s[0]).is_integer() for s in calls)  # at the aligned fractional steps
    torch.testing.assert_close(voc.vocode(mel, "fast", gen(5)), a, rtol=0, atol=0)
    assert not torch.equal(voc.vocode(mel, "fast", gen(6)), a)
    calls.clear()
    b = voc.vocode(torch.stack([mel, mel.flip(-1)]), "full", gen(5))
    assert b.shape == (2, 11 * HOP)
    # each mel is its own sampling run (its noise and result depend on that mel alone): T calls per mel
    assert len(calls) == 2 * model.config.diffusion.num_steps
    assert [int(s[0]) for s in calls] == 2 * list(range(model.config.diffusion.num_steps - 1, -1, -1))


def test_vocoder_mel_uses_the_models_preset():
    voc = Vocoder(small_model(mel={"preset": "hifigan", "sample_rate": 22050}))
    wav = speech_like(0.5, 22050, seed=1)
    torch.testing.assert_close(voc.mel(wav), compute_mel(wav, voc.config.mel))
    assert voc.mel(wav).min() < 0  # natural-log magnitudes, not the [0, 1] diffwave mel


def test_a_mel_of_the_wrong_preset_is_refused_naming_the_expected_preset():
    voc = Vocoder(small_model(5))  # diffwave preset
    hifigan_like = torch.log(torch.rand(80, 20).clamp(min=1e-5))
    with pytest.raises(MelError, match="'diffwave'"):
        voc.vocode(hifigan_like)
    voc2 = Vocoder(small_model(5, mel={"preset": "hifigan", "sample_rate": 22050}))
    with pytest.raises(MelError, match="'hifigan'"):
        voc2.vocode(torch.rand(80, 20))
    with pytest.raises(MelError, match="mel bands"):
        voc.vocode(torch.rand(20, 80))


def test_unconditional_generation_shape_and_seed():
    voc = Vocoder(small_model(6, conditional=False))
    clips = voc.generate(3, gen(1))
    assert clips.shape == (3, 1024) and clips.abs().max() <= 1
    torch.testing.assert_close(voc.generate(3, gen(1)), clips, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unconditional"):
        voc.vocode(torch.rand(80, 4))


def test_export_round_trip_rebuilds_the_stored_config(tmp_path):
    model = small_model(7, mel={"preset": "hifigan", "sample_rate": 22050})
    save_export(model, {"model": model.config.to_dict()}, tmp_path / "exp")
    back = load(tmp_path / "exp", "cpu")
    assert back.config == model.config  # not the defaults: the hifigan preset and the small sizes come back
    x, t, mel = torch.randn(2, 4 * HOP), torch.tensor([1, 30]), torch.log(torch.rand(2, 80, 4) + 1e-3)
    torch.testing.assert_close(back.model(x, t, mel), model(x, t, mel), rtol=0, atol=0)


def test_save_export_and_a_run_export_write_the_same_format(tmp_path):
    """One writer (diffcore.checkpoint.write_export): a model saved from the API and the same weights exported
    from a checkpoint give the same config.json bytes, tensors and metadata (but the step, which only a run has)."""
    import json
    import struct

    from diffcore.checkpoint import export, save_checkpoint

    model = small_model(3)
    config = {"model": model.config.to_dict(), "data": {"path": "x"}}
    save_export(model, config, tmp_path / "api")
    save_checkpoint({"format": 1, "step": 9, "model": model.state_dict(), "ema": None, "config": config},
                    tmp_path / "run" / "checkpoints", 9)
    export(tmp_path / "run", tmp_path / "run_export")

    def parts(folder):
        blob = (folder / "model.safetensors").read_bytes()
        n = struct.unpack("<Q", blob[:8])[0]  # safetensors: header length, JSON header, tensor bytes
        return (folder / "config.json").read_bytes(), json.loads(blob[8 : 8 + n]), blob[8 + n :]

    api_config, api_header, api_data = parts(tmp_path / "api")
    run_config, run_header, run_data = parts(tmp_path / "run_export")
    assert api_config == run_config and api_data == run_data
    assert run_header.pop("__metadata__") == {**api_header.pop("__metadata__"), "step": "9"}
    assert api_header == run_header


# ------------------------------------------------------------------------------------------------ files


def test_collect_inputs_names_outputs_and_rejects_collisions(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    save_audio(tmp_path / "in" / "a.wav", speech_like(0.3, 22050, seed=0), 22050)
    np.save(tmp_path / "in" / "sub" / "b.npy", np.random.rand(80, 5).astype(np.float32))
    (tmp_path / "in" / "notes.txt").write_text("not audio")
    items = collect_inputs([tmp_path / "in"])
    assert sorted(str(i.out_name) for i in items) == ["a.wav", "sub/b.wav"]
    assert [i.is_mel for i in sorted(items, key=lambda i: str(i.out_name))] == [False, True]
    np.save(tmp_path / "in" / "a.npy", np.random.rand(80, 5).astype(np.float32))
    with pytest.raises(ValueError, match="would both be written"):
        collect_inputs([tmp_path / "in"])
    with pytest.raises(FileNotFoundError):
        collect_inputs([tmp_path / "missing"])


def test_vocode_files_lengths_and_bad_inputs(tmp_path):
    model = small_model(8)
    wav = speech_like(0.7, 22050, seed=2)
    save_audio(tmp_path / "in" / "speech.wav", wav, 22050)
    save_audio(tmp_path / "in" / "speech16k.wav", speech_like(0.7, 16000, seed=3), 16000)  # resampled
    np.save(tmp_path / "in" / "mel.npy", compute_mel(wav, model.config.mel).numpy()[:, :9])
    np.save(tmp_path / "in" / "wrong.npy", np.log(np.random.rand(80, 9) + 1e-4).astype(np.float32))
    written, failed = vocode_files(model, collect_inputs([tmp_path / "in"]), tmp_path / "out", progress=False,
                                   batch_size=2)
    lengths = {p.name: load_audio(p)[0].shape[-1] for p in written}
    assert lengths == {"speech.wav": wav.shape[-1], "speech16k.wav": round(0.7 * 22050), "mel.wav": 9 * HOP}
    assert all(load_audio(p)[1] == 22050 for p in written)
    assert [p.name for p, _ in failed] == ["wrong.npy"] and "'diffwave'" in failed[0][1]
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_vocode_files_refuses_to_overwrite_an_input(tmp_path):
    save_audio(tmp_path / "a.wav", speech_like(0.3, 22050, seed=0), 22050)
    with pytest.raises(VocodeError, match="overwrite"):
        vocode_files(small_model(), collect_inputs([tmp_path]), tmp_path, progress=False)


# ------------------------------------------------------------------------------------------------ inference speed-ups


def test_eager_is_the_eager_float32_sampler_exactly():
    """``inference="eager"`` makes the same network calls as diffcore's sampler on the bare model."""
    from diffcore.denoiser import VPDenoiser
    from diffcore.discretization import fast_schedule
    from diffcore.samplers import ddpm_sample

    model = small_model(1)
    mel = torch.rand(model.config.n_mels, 12)
    wav = vocode_mels(model, [mel], "fast", generator=gen(3), inference="eager", max_frames=None)[0]
    schedule = model.config.diffusion.build()
    ref = ddpm_sample(VPDenoiser(model, schedule), (1, 12 * HOP), fast_schedule(schedule, model.config.inference_betas),
                      variance="posterior", cond=mel[None], clip_sample=1.0, generator=gen(3))[0].clamp(-1, 1)
    torch.testing.assert_close(wav, ref, rtol=0, atol=1e-6)


def test_default_inference_path_stays_close_to_the_eager_path():
    """The default path (bf16 autocast where the CPU has it, channels-last, conditioner cache) deviates from the eager
    float32 waveform by at most the stated tolerance: SNR above 25 dB for the same noise. (BENCHMARKS.md states the
    deviation on the BASE model: about 51 dB.) With every lever on, the conditioner cache must have been used."""
    from diffwave.sample import inference_runner

    model = small_model(2)
    mel = torch.rand(model.config.n_mels, 20)
    eager = vocode_mels(model, [mel], "fast", generator=gen(5), inference="eager")[0]
    default = vocode_mels(model, [mel], "fast", generator=gen(5))[0]
    snr = 10 * torch.log10(eager.pow(2).sum() / (default - eager).pow(2).sum().clamp_min(1e-20))
    assert snr > 25, f"default inference path deviates: SNR {snr:.1f} dB"
    assert inference_runner(model).cache_condition  # on the CPU the cache is on by default
    model.set_runtime(channels_last=False)  # leave the shared model as other tests expect
