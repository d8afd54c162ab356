"""The vocoder's energy prior (PriorGrad), the STFT loss term, ragged vocoding and the shipped vocoders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from diffcore.config import ConfigError
from diffcore.denoiser import VPDenoiser
from diffcore.losses import diffusion_loss
from diffcore.pretrained import ShippedModels
from diffwave.api import Vocoder, available_models, load
from diffwave.config import DiffWaveConfig
from diffwave.mel import MelConfig, compute_mel
from diffwave.model import DiffWave
from diffwave.prior import TILT, PriorConfig, frame_prior_std, mel_magnitudes, noise_calibration, sample_prior_std
from diffwave.recipe import DiffWaveRecipe, LossConfig
from diffwave.task import mr_stft_loss

PRESETS = ["diffwave", "hifigan"]


def _tilted_noise(seconds: float, rms: float, seed: int, sr: int = 22050) -> torch.Tensor:
    white = np.random.default_rng(seed).standard_normal(int(seconds * sr))
    x = scipy.signal.lfilter([1.0], [1.0, -TILT], white)
    return torch.from_numpy(rms * x / x.std()).float()


# ----------------------------------------------------------------------------------------------------- the prior


@pytest.mark.parametrize("bad", [{"ref_rms": 0.0}, {"ref_rms": -1}, {"ref_rms": 100.0}, {"min_std": 0.0},
                                 {"min_std": 1.5}, {"kind": "spectral"}])
def test_prior_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError, match="prior|kind"):
        PriorConfig.from_dict(bad)


@pytest.mark.parametrize("preset", PRESETS)
def test_mel_magnitudes_invert_the_stored_scale(preset):
    cfg = MelConfig.from_dict({"preset": preset})
    m = torch.tensor([1e-3, 0.01, 0.1, 1.0, 3.0])
    stored = (20 * torch.log10(m) - 20 + 100) / 100 if preset == "diffwave" else torch.log(m)
    assert torch.allclose(mel_magnitudes(stored[:, None], cfg)[:, 0], m, rtol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_calibrated_energy_is_the_rms_of_speech_tilted_noise(preset):
    """On fresh noise with the calibration's tilt (another seed), the estimate r = c·e recovers the RMS, at two
    levels, so the prior scales linearly with loudness."""
    cfg = MelConfig.from_dict({"preset": preset})
    c = noise_calibration(cfg)
    prior = PriorConfig(ref_rms=1.0, min_std=1e-3)
    for rms in (0.02, 0.2):
        s = frame_prior_std(compute_mel(_tilted_noise(3.0, rms, seed=7), cfg), cfg, prior)
        assert abs(float(s[2:-2].mean()) / rms - 1.0) < 0.05, (preset, rms, c)


def test_noise_calibration_is_measured_once_per_mel_configuration(monkeypatch):
    """The docstring's promise: the 20 s measurement runs once per mel configuration (an equal config built anew
    reads it back; another front end gets its own), and the cached value is the measurement's."""
    import diffwave.prior as prior_mod

    calls = []
    measure = prior_mod._measure_calibration
    monkeypatch.setattr(prior_mod, "_CALIBRATIONS", {})
    monkeypatch.setattr(prior_mod, "_measure_calibration", lambda cfg: calls.append(cfg) or measure(cfg))
    cfg = MelConfig.from_dict({"preset": "diffwave"})
    first = noise_calibration(cfg)
    assert noise_calibration(MelConfig.from_dict({"preset": "diffwave"})) == first and len(calls) == 1
    frame_prior_std(torch.rand(80, 6), cfg, PriorConfig())  # every prior computation reads the same value
    assert len(calls) == 1
    other = MelConfig.from_dict({"preset": "diffwave", "n_fft": 512, "win_length": 512})
    assert noise_calibration(other) == measure(other) and len(calls) == 2
    assert first == measure(cfg)


def test_the_two_presets_give_the_same_prior_for_the_same_audio():
    env = torch.linspace(0.01, 0.3, 40).repeat_interleave(2205)  # a crescendo, 4 s
    audio = env * _tilted_noise(4.0, 1.0, seed=5)
    prior = PriorConfig()
    s = [frame_prior_std(compute_mel(audio, MelConfig.from_dict({"preset": p})), MelConfig.from_dict({"preset": p}),
                         prior)[4:-4] for p in PRESETS]
    n = min(len(s[0]), len(s[1]))
    ratio = (s[0][:n] / s[1][:n]).median()
    assert abs(float(ratio) - 1.0) < 0.1


@pytest.mark.parametrize("preset", PRESETS)
def test_prior_std_is_bounded_follows_loudness_and_holds_over_each_hop(preset):
    cfg = MelConfig.from_dict({"preset": preset})
    prior = PriorConfig(ref_rms=0.25, min_std=0.1)
    quiet, loud = _tilted_noise(1.0, 1e-4, 1), _tilted_noise(1.0, 0.5, 2)
    mel = compute_mel(torch.cat([quiet, loud]), cfg)
    s = frame_prior_std(mel, cfg, prior)
    assert float(s.min()) >= 0.1 - 1e-7 and float(s.max()) <= 1.0 + 1e-7
    f = mel.shape[-1]
    assert torch.allclose(s[5 : f // 2 - 5], torch.tensor(0.1))  # silence keeps min_std
    assert torch.allclose(s[f // 2 + 5 : -5], torch.tensor(1.0))  # loud speech saturates at 1
    per_sample = sample_prior_std(mel, cfg, prior)
    assert per_sample.shape[-1] == f * cfg.hop_length
    assert torch.equal(per_sample.reshape(f, cfg.hop_length), s[:, None].expand(f, cfg.hop_length))


def test_config_with_prior_round_trips_and_old_configs_keep_the_identity_prior():
    cfg = DiffWaveConfig.preset("tiny", prior={"ref_rms": 0.3})
    again = DiffWaveConfig.from_dict(cfg.to_dict())
    assert again.prior == PriorConfig(ref_rms=0.3) and again == cfg
    old = cfg.to_dict()
    del old["prior"]
    assert DiffWaveConfig.from_dict(old).prior is None
    with pytest.raises(ConfigError, match="unconditional"):
        DiffWaveConfig.preset("unconditional", prior={})


# ----------------------------------------------------------------------------------------------------- training


def _recipe(tmp_path, model=None, **loss):
    folder = tmp_path / "wavs"
    folder.mkdir()
    import soundfile as sf

    for i in range(3):
        sf.write(folder / f"c{i}.wav", _tilted_noise(0.5, 0.1, i).numpy(), 22050)
    return DiffWaveRecipe.from_dict({"model": {"preset": "tiny", "prior": {}, **(model or {})},
                                     "data": {"path": str(folder), "crop_frames": 8}, "train": {"batch_size": 2},
                                     "loss": loss})


def _batch(task, n=2):
    ds = task.train_dataset()
    return {k: torch.stack([ds[i][k] for i in range(n)]) for k in ds[0]}


def test_vocoder_task_loss_is_the_prior_weighted_diffusion_loss(tmp_path):
    from diffwave.task import make_task

    task = make_task(_recipe(tmp_path))
    torch.manual_seed(0)
    model = DiffWave(task.recipe.model)
    with torch.no_grad():  # the output layer starts at zero (as lmnt's): give the network an output to weigh
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch(task)
    cfg = task.recipe.model
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = task._loss(model, batch["audio"], batch["mel"], generator=g1)
    s = sample_prior_std(batch["mel"], cfg.mel, cfg.prior)
    den = VPDenoiser(model, task.schedule)
    want = diffusion_loss(den.with_prior(s), batch["audio"], batch["mel"], norm=cfg.diffusion.loss, generator=g2)
    plain = diffusion_loss(den, batch["audio"], batch["mel"], norm=cfg.diffusion.loss,
                           generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, want)
    assert not torch.allclose(got, plain)  # the prior changes the loss: it is wired in


def test_stft_term_adds_the_multi_resolution_loss_of_the_x0_estimate(tmp_path):
    from diffwave.task import make_task

    task = make_task(_recipe(tmp_path, stft_weight=0.5))
    torch.manual_seed(0)
    model = DiffWave(task.recipe.model)
    batch = _batch(task)
    with_stft = task._loss(model, batch["audio"], batch["mel"], generator=torch.Generator().manual_seed(1))
    task.recipe.loss.stft_weight = 0.0
    without = task._loss(model, batch["audio"], batch["mel"], generator=torch.Generator().manual_seed(1))
    extra = with_stft - without
    assert bool((extra > 0).all())
    with_stft.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_stft_term_is_on_the_denoisers_x0_from_the_one_network_call(tmp_path, prediction):
    """The STFT term is mr_stft_loss of x̂0 rebuilt here from the drawn t and z (under the prior's s): for an
    eps-predicting network (x_t − √(1−ᾱ) ε̂)/√ᾱ, for an x0-predicting one its output; the loss calls the network
    once."""
    from diffwave.task import make_task

    task = make_task(_recipe(tmp_path, model={"diffusion": {"prediction": prediction}}, stft_weight=0.5))
    cfg = task.recipe.model
    torch.manual_seed(0)
    model = DiffWave(cfg)
    with torch.no_grad():
        torch.nn.init.normal_(model.output_projection.weight, std=0.1)
    audio, mel = (_batch(task)[k] for k in ("audio", "mel"))
    outputs = []
    model.register_forward_hook(lambda module, args, out: outputs.append(out))
    got = task._loss(model, audio, mel, generator=torch.Generator().manual_seed(1))
    assert len(outputs) == 1
    g = torch.Generator().manual_seed(1)
    sched = task.schedule
    t = torch.randint(0, sched.num_steps, (audio.shape[0],), generator=g)
    z = torch.randn(audio.shape, generator=g)
    s = sample_prior_std(mel, cfg.mel, cfg.prior)[..., : audio.shape[-1]]
    a, b = sched.at("sqrt_alphas_cumprod", t, audio), sched.at("sqrt_one_minus_alphas_cumprod", t, audio)
    x_t = a * audio + b * s * z
    with torch.no_grad():
        out = model(x_t, t, mel)
        torch.testing.assert_close(outputs[0], out)  # the draws are the ones the loss made
        x0_hat = (x_t - b * out) / a if prediction == "eps" else out
        task.recipe.loss.stft_weight = 0.0
        without = task._loss(model, audio, mel, generator=torch.Generator().manual_seed(1))
        want = 0.5 * mr_stft_loss(x0_hat.clamp(-1, 1), audio, task.recipe.loss.stft_sizes)
    torch.testing.assert_close(got.detach() - without, want, rtol=1e-4, atol=1e-5)


def test_mr_stft_loss_properties():
    x = _tilted_noise(0.2, 0.1, 0)[None].repeat(2, 1)
    y = x.clone()
    y[1] = _tilted_noise(0.2, 0.1, 9)
    loss = mr_stft_loss(x, y)
    assert loss.shape == (2,) and float(loss[0]) < 1e-4 < float(loss[1])
    short = torch.randn(1, 300)
    assert torch.isfinite(mr_stft_loss(short, short.flip(-1))).all()  # 512 and 1024 skipped, 256 used
    with pytest.raises(ValueError, match="longer than the crop"):
        mr_stft_loss(short[:, :100], short[:, :100])
    with pytest.raises(ConfigError, match="stft_weight"):
        LossConfig(stft_weight=-1.0)


# ----------------------------------------------------------------------------------------------------- sampling


class _Zero(torch.nn.Module):
    """A network that predicts ε̂ = 0: sampling is then pure scaled noise, so its level shows the prior."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond=None):
        return torch.zeros_like(x) * self.w


def test_vocoding_starts_from_and_adds_noise_of_the_priors_level():
    # s = 0.2 in the loud half and 0.02 in the quiet one: small enough that the per-step clamp to [-1, 1] is rare
    cfg = DiffWaveConfig.preset("tiny", prior={"ref_rms": 1.0, "min_std": 0.02})
    mel_cfg = cfg.mel
    audio = torch.cat([_tilted_noise(1.0, 1e-4, 1), _tilted_noise(1.0, 0.2, 2)])
    mel = compute_mel(audio, mel_cfg)
    from diffwave.sample import vocode_mels

    out = vocode_mels(_Zero(cfg), [mel], generator=torch.Generator().manual_seed(0), inference="eager")[0]
    half = out.shape[-1] // 2
    quiet, loud = out[2048 : half - 2048].std(), out[half + 2048 : -2048].std()
    assert 8.0 < float(loud / quiet) < 12.0  # s is 0.2 there and 0.02 here
    plain = vocode_mels(_Zero(DiffWaveConfig.preset("tiny")), [mel], generator=torch.Generator().manual_seed(0),
                        inference="eager")[0]
    assert 0.8 < float(plain[:half].std() / plain[half:].std()) < 1.25  # without a prior: one level


# ----------------------------------------------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def vocoder():
    torch.manual_seed(0)
    return Vocoder(DiffWave(DiffWaveConfig.preset("tiny", prior={})), source="test")


def test_ragged_batches_list_and_padded_with_lengths(vocoder):
    a, b = torch.rand(80, 9), torch.rand(80, 14)
    waves = vocoder.vocode([a, b], generator=torch.Generator().manual_seed(0), inference="eager")
    assert [w.shape[-1] for w in waves] == [9 * 256, 14 * 256]
    padded = torch.zeros(2, 80, 14)
    padded[0, :, :9], padded[1] = a, b
    out, lengths = vocoder.vocode(padded, lengths=torch.tensor([9, 14]), generator=torch.Generator().manual_seed(0),
                                  inference="eager")
    assert out.shape == (2, 14 * 256) and lengths.tolist() == [9 * 256, 14 * 256]
    assert torch.equal(out[0, : 9 * 256], waves[0]) and torch.equal(out[1], waves[1])
    assert torch.count_nonzero(out[0, 9 * 256 :]) == 0
    np_out = vocoder.vocode([a.numpy(), b.numpy()], generator=torch.Generator().manual_seed(0), inference="eager")
    assert all(isinstance(w, np.ndarray) for w in np_out) and np.array_equal(np_out[1], waves[1].numpy())
    np_pad, np_len = vocoder.vocode(padded.numpy(), lengths=[9, 14], generator=torch.Generator().manual_seed(0),
                                    inference="eager")
    assert isinstance(np_pad, np.ndarray) and np_len.tolist() == [9 * 256, 14 * 256]


@pytest.mark.parametrize("lengths,match", [([9], "2 integer frame counts"), ([0, 14], r"lie in \[1, 14\]"),
                                           ([9, 15], r"lie in \[1, 14\]"), ([9.0, 14.0], "integer")])
def test_bad_lengths_are_refused(vocoder, lengths, match):
    with pytest.raises(ValueError, match=match):
        vocoder.vocode(torch.rand(2, 80, 14), lengths=lengths)


def test_a_list_takes_no_lengths_and_each_mel_must_be_2d(vocoder):
    with pytest.raises(ValueError, match="lengths goes with a padded batch"):
        vocoder.vocode([torch.rand(80, 4)], lengths=[4])
    with pytest.raises(ValueError, match=r"mel\[1\] must be \[n_mels, F\]"):
        vocoder.vocode([torch.rand(80, 4), torch.rand(1, 80, 4)])
    assert vocoder.vocode([]) == []


def test_shipped_models_registry(tmp_path):
    reg = ShippedModels(tmp_path, "vocoder")
    assert reg.names() == []
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    (tmp_path / "good").mkdir()
    for f in ("config.json", "model.safetensors"):
        (tmp_path / "good" / f).write_text("x")
    assert reg.names() == ["good"]
    assert reg.folder_of("good") == tmp_path / "good"
    with pytest.raises(KeyError, match="shipped: good"):
        reg.folder_of("nope")
    assert reg.resolve("good") == tmp_path / "good"
    assert reg.resolve("nope") == __import__("pathlib").Path("nope")


def test_vocoder_saves_float16_and_loads_back_as_float32(vocoder, tmp_path):
    out = vocoder.save(tmp_path / "exp", dtype=torch.float16)
    from safetensors.torch import load_file

    stored = load_file(out / "model.safetensors")
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    back = load(out, "cpu")
    assert back.config == vocoder.config
    for k, v in back.model.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, vocoder.model.state_dict()[k].half().float())


def test_an_export_with_the_legacy_key_fast_betas_loads_and_vocodes_the_same(vocoder, tmp_path):
    """An export written before fast_betas was renamed inference_betas loads (with a DeprecationWarning) into the
    same config and gives the same waveform for the same noise."""
    import json
    import warnings

    out = vocoder.save(tmp_path / "new")
    legacy = tmp_path / "old"
    legacy.mkdir()
    text = (out / "config.json").read_text()
    assert text.count('"inference_betas":') == 1
    (legacy / "config.json").write_text(text.replace('"inference_betas":', '"fast_betas":'))
    (legacy / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new export loads without a warning
        new = load(out, "cpu")
    with pytest.warns(DeprecationWarning, match="fast_betas"):
        old = load(legacy, "cpu")
    assert old.config == new.config and "fast_betas" in json.loads((legacy / "config.json").read_text())["model"]
    mel = torch.rand(new.config.n_mels, 12)
    a = new.vocode(mel, generator=torch.Generator().manual_seed(3))
    b = old.vocode(mel, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def _shipped_diffwaves() -> list[str]:
    """The shipped DiffWave vocoders (the refiner, which has no prior and no noise, has its own test)."""
    import json

    from diffwave.pretrained import SHIPPED

    return [n for n in available_models()
            if json.loads((SHIPPED.folder_of(n) / "config.json").read_text()).get("network") != "refiner"]


@pytest.mark.skipif(not _shipped_diffwaves(), reason="no DiffWave vocoder ships with this copy of the package")
@pytest.mark.parametrize("name", _shipped_diffwaves() or ["none"])
def test_shipped_vocoder_loads_by_name_offline_and_makes_speech_from_the_shipped_clips(name):
    """The shipped model, loaded by name, vocodes the shipped real-speech clips (never trained on) into audio whose
    intelligibility (STOI) is within 0.05 of what its card reports on the held-out clips, and whose spectrum is far
    closer to the recording's than the noise its prior starts from (log-mel L1 below 60 % of the noise's: the
    network, not only the prior's loudness contour, makes the speech); the file is at most 8 MiB."""
    import json

    from diffwave.metrics import evaluate_pair
    from diffwave.pretrained import SHIPPED
    from diffwave.speech import speech_files

    folder = SHIPPED.folder_of(name)
    assert (folder / "model.safetensors").stat().st_size <= 8 * 1024 * 1024
    assert (folder / "MODEL_CARD.md").is_file()
    card = json.loads((folder / "config.json").read_text())["provenance"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped config uses today's keys: loading it warns about nothing
        voc = load(name, "cpu")
    assert card["name"] == name and card["step"] > 0
    from diffwave.audio import load_audio

    stoi, l1, l1_noise = [], [], []
    for f in speech_files():
        ref, _ = load_audio(f, voc.sample_rate)
        mel = voc.mel(ref)
        est = voc.vocode(mel, generator=torch.Generator().manual_seed(0))[: ref.shape[-1]]
        assert torch.isfinite(est).all() and est.abs().max() <= 1.0
        scores = evaluate_pair(ref, est, voc.sample_rate, with_dnsmos=False)
        stoi.append(scores["stoi"])
        l1.append(scores["log_mel_l1"])
        noise = _Zero(voc.config)
        from diffwave.sample import vocode_mels

        shaped = vocode_mels(noise, [mel], generator=torch.Generator().manual_seed(0), inference="eager")[0][: ref.shape[-1]]
        l1_noise.append(evaluate_pair(ref, shaped, voc.sample_rate, with_dnsmos=False)["log_mel_l1"])
    card_stoi = card["held_out_metrics"]["DiffWave (fast)"]["stoi"]
    assert math.isfinite(card_stoi)
    assert np.mean(stoi) > card_stoi - 0.05
    assert np.mean(l1) < 0.6 * np.mean(l1_noise)
