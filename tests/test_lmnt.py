"""Import of lmnt-com/diffwave checkpoints against fixtures written by lmnt's own code, and export back."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from diffcore.config import DiffusionConfig
from diffwave.config import DiffWaveConfig
from diffwave.lmnt import (
    LmntImportError,
    config_from_lmnt_params,
    lmnt_checkpoint,
    lmnt_state_dict,
    load_lmnt_checkpoint,
    read_lmnt_checkpoint,
)
from diffwave.model import DiffWave, step_embedding_table


@pytest.fixture(scope="module")
def interop(shared_data) -> Path:
    folder = shared_data / "interop"
    if not (folder / "lmnt_small_checkpoint.pt").is_file():
        pytest.skip(f"{folder} lacks lmnt_small_checkpoint.pt (the lmnt interoperability fixtures)")
    return folder


def small_params(**changes):
    """lmnt hyper-parameters of a small model (as lmnt's params.py writes them)."""
    return {
        "batch_size": 16,
        "learning_rate": 2e-4,
        "max_grad_norm": None,
        "sample_rate": 22050,
        "n_mels": 80,
        "n_fft": 1024,
        "hop_samples": 256,
        "crop_mel_frames": 62,
        "residual_layers": 4,
        "residual_channels": 8,
        "dilation_cycle_length": 2,
        "unconditional": False,
        "noise_schedule": np.linspace(1e-4, 0.05, 50).tolist(),
        "inference_noise_schedule": [0.0001, 0.001, 0.01, 0.05, 0.2, 0.5],
        "audio_len": 22050 * 5,
        **changes,
    }


def save_checkpoint(tmp_path, params, state=None, name="weights.pt"):
    """A checkpoint in lmnt's layout whose weights come from our model built from ``params``."""
    if state is None:
        torch.manual_seed(0)
        model = DiffWave(config_from_lmnt_params(params))
        torch.nn.init.normal_(model.output_projection.weight)
        state = model.state_dict()
    path = tmp_path / name
    torch.save({"step": 7, "model": state, "params": params, "optimizer": {}, "scaler": {}}, path)
    return path


def test_real_lmnt_checkpoint_reproduces_lmnt_outputs(interop):
    model, cfg = load_lmnt_checkpoint(interop / "lmnt_small_checkpoint.pt")
    io = torch.load(interop / "lmnt_small_io.pt", weights_only=True)
    assert not model.training
    with torch.no_grad():
        out = model(io["audio"], io["diffusion_step"], io["spectrogram"])  # ours: (x_t, t, cond)
        out_frac = model(io["audio"][:1], io["float_diffusion_step"], io["spectrogram"][:1])
    ref, ref_frac = io["output"].squeeze(1), io["float_output"].squeeze(1)
    assert io["diffusion_step"].dtype == torch.int64 and not float(io["float_diffusion_step"]).is_integer()
    # Only float32 summation order differs (we accumulate skips instead of stacking them): max |diff| ≈ 3e-7.
    assert (out - ref).abs().max() < 2e-6 and (out_frac - ref_frac).abs().max() < 2e-6
    assert ref.abs().max() > 0.1  # the recorded outputs are not trivially zero


def test_real_lmnt_params_become_our_config(interop):
    _, cfg = load_lmnt_checkpoint(interop / "lmnt_small_checkpoint.pt")
    assert (cfg.residual_layers, cfg.residual_channels, cfg.dilation_cycle) == (6, 16, 3)
    assert cfg.conditional and cfg.upsample_strides == (16, 16) and cfg.n_mels == 80
    assert cfg.diffusion == DiffusionConfig.from_dict(
        {"schedule": "linear", "num_steps": 50, "beta_start": 1e-4, "beta_end": 0.05, "loss": "l1"}
    )
    assert cfg.inference_betas == (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5)
    mel = cfg.mel
    assert (mel.preset, mel.sample_rate, mel.n_fft) == ("diffwave", 22050, 1024)
    assert (mel.hop_length, mel.win_length) == (256, 1024)  # lmnt's preprocess.py: win_length = 4 * hop
    assert (mel.f_min, mel.fmax_hz) == (20.0, 11025.0)  # lmnt's preprocess.py: f_min 20, f_max sr/2
    assert cfg.audio_length == 110250
    assert DiffWaveConfig.from_dict(cfg.to_dict()) == cfg


def test_base_preset_state_dict_is_lmnt_base_layout(interop):
    reference = json.loads((interop / "lmnt_base_state_dict_shapes.json").read_text())
    ours = {k: list(v.shape) for k, v in DiffWave(DiffWaveConfig.preset("base")).state_dict().items()}
    assert ours == reference


def test_attrdict_params_load_without_unrestricted_unpickling(tmp_path, monkeypatch):
    """Older lmnt checkpoints pickle params as diffwave.params.AttrDict; it loads as a plain dict, weights-only."""

    class AttrDict(dict):  # what lmnt's params.py defines: a dict whose attributes are its items
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__ = self

    AttrDict.__module__, AttrDict.__qualname__ = "diffwave.params", "AttrDict"
    fake = types.ModuleType("diffwave.params")
    fake.AttrDict = AttrDict
    monkeypatch.setitem(sys.modules, "diffwave.params", fake)
    plain = save_checkpoint(tmp_path, small_params(), name="plain.pt")
    ckpt = torch.load(plain, weights_only=True)
    ckpt["params"] = AttrDict(ckpt["params"])
    torch.save(ckpt, tmp_path / "attr.pt")
    monkeypatch.delitem(sys.modules, "diffwave.params")  # lmnt's package is not installed when we load

    with pytest.raises(Exception, match="AttrDict"):  # torch's own weights-only loader refuses the class
        torch.load(tmp_path / "attr.pt", weights_only=True)
    read = read_lmnt_checkpoint(tmp_path / "attr.pt")
    assert type(read["params"]) is dict and read["params"] == small_params()
    (m1, c1), (m2, c2) = load_lmnt_checkpoint(tmp_path / "attr.pt"), load_lmnt_checkpoint(plain)
    assert c1 == c2
    for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


class Payload:  # any class other than lmnt's AttrDict stays forbidden
    def __reduce__(self):
        return (print, ("this must never run",))


def test_other_pickled_globals_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "params": Payload()}, path)
    with pytest.raises(LmntImportError, match="refused by the weights-only loader.*Unsupported global: GLOBAL print"):
        read_lmnt_checkpoint(path)


def test_export_import_round_trip(tmp_path):
    cfg = DiffWaveConfig.preset("tiny", residual_layers=4, embedding_hidden=512, audio_length=22050)
    torch.manual_seed(3)
    model = DiffWave(cfg).eval()
    torch.nn.init.normal_(model.output_projection.weight)
    ckpt = lmnt_checkpoint(model, step=11)
    assert set(ckpt) == {"step", "model", "params"} and ckpt["step"] == 11
    assert ckpt["params"]["noise_schedule"] == pytest.approx(np.linspace(1e-4, 0.05, 50).tolist(), rel=1e-12)
    torch.save(ckpt, tmp_path / "weights.pt")
    loaded, loaded_cfg = load_lmnt_checkpoint(tmp_path)  # a model folder holding weights.pt
    assert loaded_cfg == cfg
    x, mel, t = torch.randn(2, 768), torch.rand(2, 80, 3), torch.tensor([4.5, 30.0])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, mel), model(x, t, mel))


def test_export_refuses_what_lmnt_cannot_represent():
    with pytest.raises(ValueError, match=r"upsample_strides \[8, 32\]"):
        lmnt_state_dict(DiffWave(DiffWaveConfig.preset("tiny", upsample_strides=[8, 32], embedding_hidden=512)))
    with pytest.raises(ValueError, match="step embedding 128 → 128"):
        lmnt_checkpoint(DiffWave(DiffWaveConfig.preset("tiny")))


def test_unconditional_lmnt_model(tmp_path):
    params = small_params(unconditional=True, audio_len=16000, sample_rate=16000)
    path = save_checkpoint(tmp_path, params)
    model, cfg = load_lmnt_checkpoint(path)
    assert not cfg.conditional and cfg.mel is None and model.spectrogram_upsampler is None
    assert (cfg.sample_rate, cfg.audio_length) == (16000, 16000)
    assert not any("conditioner" in k or "upsampler" in k for k in model.state_dict())
    with torch.no_grad():
        assert model(torch.randn(1, 300), torch.tensor([3])).shape == (1, 300)


def test_prefixed_keys_and_a_stored_embedding_table_are_accepted(tmp_path):
    params = small_params()
    torch.manual_seed(0)
    ref = DiffWave(config_from_lmnt_params(params)).eval()
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    state["module.diffusion_embedding.embedding"] = step_embedding_table(50, 128)
    model, _ = load_lmnt_checkpoint(save_checkpoint(tmp_path, params, state))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    state["module.diffusion_embedding.embedding"] = torch.zeros(50, 128)
    with pytest.raises(LmntImportError, match="step-embedding table differs"):
        load_lmnt_checkpoint(save_checkpoint(tmp_path, params, state))


def test_mismatched_or_unusable_checkpoints_fail_with_the_file_name(tmp_path):
    params = small_params()
    state = DiffWave(config_from_lmnt_params(params)).state_dict()
    del state["residual_layers.3.output_projection.bias"]
    path = save_checkpoint(tmp_path, params, state)
    with pytest.raises(LmntImportError, match=r"weights.pt.*missing: \['residual_layers.3.output_projection.bias'\]"):
        load_lmnt_checkpoint(path)
    path = save_checkpoint(tmp_path, small_params(hop_samples=300), state={}, name="hop.pt")
    with pytest.raises(LmntImportError, match=r"hop.pt.*hard-wired to 16 x 16 = 256"):
        load_lmnt_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LmntImportError, match="junk.pt: cannot read as a torch checkpoint"):
        load_lmnt_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(LmntImportError, match="no such lmnt checkpoint"):
        load_lmnt_checkpoint(tmp_path / "absent.pt")


def test_fast_schedule_can_be_overridden_on_import(tmp_path):
    # an inference schedule that does not align with T = 50 is reported, and can be replaced while importing
    state = DiffWave(config_from_lmnt_params(small_params())).state_dict()
    path = save_checkpoint(tmp_path, small_params(inference_noise_schedule=[1e-4, 0.9]), state)
    with pytest.raises(LmntImportError, match="do not align"):
        load_lmnt_checkpoint(path)
    _, cfg = load_lmnt_checkpoint(path, overrides={"inference_betas": [1e-4, 0.01, 0.5]})
    assert cfg.inference_betas == (1e-4, 0.01, 0.5)


def test_non_linear_noise_schedule(tmp_path):
    betas = (np.linspace(1e-2, np.sqrt(0.08), 50) ** 2).tolist()
    params = small_params(noise_schedule=betas)
    if "betas" in DiffusionConfig.field_names():  # DiffusionConfig can hold an explicit schedule
        cfg = config_from_lmnt_params(params)
        assert cfg.diffusion.schedule == "betas" and list(cfg.diffusion.betas) == pytest.approx(betas)
    else:
        path = save_checkpoint(tmp_path, params, state={})
        with pytest.raises(LmntImportError, match="not linear"):
            load_lmnt_checkpoint(path)
