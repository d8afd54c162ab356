"""Fuzzing (hypothesis) of what users hand us: the audio loader, mel validation, the recipe parser, and (issue 21)
YAML constructions, lying .npy headers, weights of any dtype, API argument types and signals during sample's writes.
Each either returns a valid result or raises its own error type (AudioError, MelError, ConfigError, ...), never
anything else. Bounded: a few hundred examples each, no deadline."""

import io
import math
import struct
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffcore.config import ConfigError, load_recipe
from diffcore.train import TrainConfig
from diffwave.audio import AudioError, audio_info, load_audio
from diffwave.mel import HIFIGAN_LOG_CEIL, HIFIGAN_LOG_FLOOR, MelConfig, MelError, load_mel_file, validate_mel
from diffwave.recipe import DiffWaveRecipe

_BASE = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)


def fuzz(examples: int) -> settings:
    """Bounded, reproducible runs (derandomized; no example database written into the repository)."""
    return settings(_BASE, max_examples=examples)
TMP = Path(tempfile.mkdtemp(prefix="diffstack_fuzz_"))


def _encoded(fmt: str, subtype: str, channels: int = 1, n: int = 600) -> bytes:
    t = np.arange(n) / 8000
    x = 0.4 * np.sin(2 * np.pi * 440 * t)[:, None] * np.ones(channels)
    buf = io.BytesIO()
    sf.write(buf, x, 8000, format=fmt, subtype=subtype)
    return buf.getvalue()


SEEDS = {
    "wav": [_encoded("WAV", "PCM_16"), _encoded("WAV", "PCM_U8"), _encoded("WAV", "FLOAT", 2),
            _encoded("WAV", "PCM_24")],
    "flac": [_encoded("FLAC", "PCM_16"), _encoded("FLAC", "PCM_24", 2)],
}


@st.composite
def audio_files(draw):
    """(extension, bytes): a valid file mutated in its header (flipped bytes, 32-bit fields overwritten with
    extreme values, truncation, junk appended) or plain random bytes."""
    ext = draw(st.sampled_from(["wav", "flac"]))
    kind = draw(st.sampled_from(["flip", "field", "truncate", "append", "random"]))
    if kind == "random":
        head = draw(st.sampled_from([b"", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC"]))
        return ext, head + draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(SEEDS[ext])))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, 59))] = draw(st.integers(0, 255))
    elif kind == "field":
        at = draw(st.integers(0, 56))
        data[at : at + 4] = struct.pack("<I", draw(st.sampled_from([0, 1, 2, 0x7FFFFFFF, 0xFFFFFFFF, 8000, 10**9])))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    else:
        data += draw(st.binary(min_size=1, max_size=64))
    return ext, bytes(data)


@fuzz(1000)
@given(audio_files(), st.sampled_from([None, 8000, 16000]))
def test_audio_loader_returns_valid_audio_or_audio_error(file, rate):
    ext, data = file
    path = TMP / f"fuzz.{ext}"
    path.write_bytes(data)
    try:
        info = audio_info(path)
        assert info.frames > 0 and info.channels >= 1 and info.sample_rate > 0
    except AudioError as e:
        assert str(path) in str(e)
    try:
        wav, sr = load_audio(path, rate)
    except AudioError as e:
        assert str(path) in str(e)
        return
    assert wav.dtype == torch.float32 and wav.ndim == 1 and wav.numel() > 0
    assert bool(torch.isfinite(wav).all())
    assert rate is None or sr == rate


@fuzz(150)
@given(st.sampled_from(["npy", "pt"]), st.binary(max_size=400), st.booleans())
def test_mel_file_loader_returns_a_float_tensor_or_mel_error(ext, data, npy_header):
    if npy_header and ext == "npy":
        data = b"\x93NUMPY\x01\x00" + data
    path = TMP / f"fuzz_mel.{ext}"
    path.write_bytes(data)
    try:
        mel = load_mel_file(path)
    except MelError as e:
        assert str(path) in str(e)
        return
    assert isinstance(mel, torch.Tensor) and mel.dtype == torch.float32


DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int16, np.uint8, np.int64, np.bool_, np.complex64])
SIZES = st.sampled_from([0, 1, 2, 3, 79, 80, 81])


@st.composite
def mel_like(draw):
    shape = tuple(draw(st.lists(SIZES, min_size=0, max_size=4)))
    assume(math.prod(shape) <= 20_000)
    dtype = draw(DTYPES)
    values = hnp.from_dtype(np.dtype(dtype), allow_nan=True, allow_infinity=True) if dtype not in (np.bool_,) \
        else st.booleans()
    if np.issubdtype(dtype, np.floating) and draw(st.booleans()):  # mostly plausible values, sometimes wild ones
        lo, hi = draw(st.sampled_from([(0.0, 1.0), (-11.5, 2.0), (-20.0, 30.0)]))
        values = st.floats(lo, hi, width=16 if dtype == np.float16 else 32)
    arr = draw(hnp.arrays(dtype, shape, elements=values, fill=values))
    return torch.from_numpy(arr.copy()) if draw(st.booleans()) else arr


@fuzz(800)
@given(mel_like(), st.sampled_from(["diffwave", "hifigan"]))
def test_mel_validation_accepts_exactly_the_mels_that_fit(mel, preset):
    config = MelConfig.from_dict({"preset": preset})
    try:
        validate_mel(mel, config, source="fuzz.npy")
    except MelError as e:
        assert str(e).startswith("fuzz.npy: ")
        return
    # accepted: check every promise independently, in float64 numpy
    arr = mel.numpy() if isinstance(mel, torch.Tensor) else mel
    assert np.issubdtype(arr.dtype, np.floating)
    assert arr.ndim in (2, 3) and arr.shape[-2] == config.n_mels and arr.size > 0
    a = arr.astype(np.float64)
    assert np.isfinite(a).all()
    if preset == "diffwave":
        assert a.min() >= -1e-6 and a.max() <= 1 + 1e-6
    else:
        assert a.min() < 0 and a.min() >= HIFIGAN_LOG_FLOOR - 1e-3 and a.max() <= HIFIGAN_LOG_CEIL


# ------------------------------------------------------------------------------------------------ recipes

KEYS = st.one_of(
    st.sampled_from(["model", "data", "train", "mel", "diffusion", "preset", "lr", "max_steps", "batch_size",
                     "residual_layers", "residual_channels", "upsample_strides", "hop_length", "n_fft", "n_mels",
                     "sample_rate", "num_steps", "betas", "schedule", "inference_betas", "path", "crop_frames",
                     "grad_accum", "ema_decay", "conditional", "audio_length", "f_max", "layout"]),
    st.text(max_size=6),
    st.integers(-2, 3),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**20), st.floats(), st.text(max_size=8),
    st.sampled_from(["linear", "betas", "diffwave", "hifigan", "l1", "eps", "adam", "auto", "base", "tiny", "1e-4"]),
)
VALUES = st.recursive(SCALARS, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(KEYS, c, max_size=4)),
                      max_leaves=16)
OVERRIDES = st.lists(
    st.builds("{}={}".format, st.lists(KEYS.map(str), min_size=1, max_size=3).map(".".join),
              st.one_of(st.text(max_size=10), st.sampled_from(["[1, 2]", "{a: 1}", "2001-13-01", "!!float x",
                                                                 "&a [*a]", "null", "1e999", "[[[["]))),
    max_size=3,
)


def _check_config(recipe):
    assert isinstance(recipe, DiffWaveRecipe)
    again = DiffWaveRecipe.from_dict(recipe.to_dict())  # what was accepted round-trips
    assert again.to_dict() == recipe.to_dict()
    assert recipe.model.n_mels == (recipe.model.mel.n_mels if recipe.model.mel is not None else recipe.model.n_mels)


@fuzz(300)
@given(st.dictionaries(KEYS, VALUES, max_size=4), OVERRIDES)
def test_recipe_parser_gives_a_config_or_config_error(data, overrides):
    try:
        recipe = DiffWaveRecipe.from_dict(data)
    except ConfigError:
        pass
    else:
        _check_config(recipe)
    try:
        recipe = load_recipe(DiffWaveRecipe, None, overrides)
    except ConfigError:
        return
    _check_config(recipe)


@fuzz(200)
@given(st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    VALUES.map(lambda v: yaml.safe_dump({"train": v}).encode()),
    st.sampled_from([b"a: &x [*x]\n", b"train: {lr: 2001-13-01}\n", b"train: !!int x\n", b"[" * 3000,
                     b"\xff\xfe\x00", b"1: 2\n", b"train: {max_steps: .inf}\n", b"model: {preset: [1]}\n"]),
))
def test_recipe_files_give_a_config_or_config_error(blob):
    path = TMP / "fuzz_recipe.yaml"
    path.write_bytes(blob)
    try:
        recipe = load_recipe(DiffWaveRecipe, path)
    except ConfigError as e:
        assert "fuzz_recipe.yaml" in str(e)
        return
    _check_config(recipe)


@fuzz(200)
@given(st.dictionaries(st.sampled_from(TrainConfig.field_names()), SCALARS, max_size=6))
def test_train_config_accepts_only_consistent_values(data):
    try:
        cfg = TrainConfig.from_dict(data)
    except ConfigError:
        return
    # an accepted config satisfies the engine's preconditions
    assert cfg.max_steps >= 1 and cfg.batch_size >= 1 and cfg.batch_size % cfg.grad_accum == 0
    assert cfg.lr > 0 and cfg.eps > 0 and cfg.weight_decay >= 0 and 0 <= cfg.ema_decay < 1 and cfg.num_workers >= 0
    floats = [cfg.lr, cfg.eps, cfg.weight_decay, cfg.min_lr_ratio, cfg.ema_decay, cfg.grad_clip or 1.0]
    assert all(math.isfinite(v) for v in floats)


def test_fuzz_seeds_are_valid_files():
    """The mutation seeds decode (so that mutations start from files the loader accepts)."""
    for ext, blobs in SEEDS.items():
        for i, blob in enumerate(blobs):
            path = TMP / f"seed{i}.{ext}"
            path.write_bytes(blob)
            wav, sr = load_audio(path)
            assert sr == 8000 and wav.shape == (600,)


# ------------------------------------------------------------------------------------------ options and exports

NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["nan", "inf", "-inf", "0", "-1", "1e9", "1e400", "3.5", "0x10", "", "  7"]),
).map(str)
OPTIONS = {
    "diffimage sample": ["--n", "--steps", "--eta", "--guidance-scale", "--seed", "--batch-size", "--nrow"],
    "diffwave vocode": ["--batch-size", "--max-frames", "--seed"],
    "diffwave generate": ["--n", "--batch-size", "--seed", "--seconds"],
    "diffwave evaluate": ["--n", "--seed", "--max-seconds", "--gl-iters", "--classifier-epochs", "--batch-size"],
}


@fuzz(250)
@given(st.sampled_from(sorted(OPTIONS)), st.data())
def test_numeric_option_values_give_one_error_line_never_a_traceback(command, data):
    """Any value of any numeric option (NaN, ±inf, huge, negative, not a number) against a model that is not there:
    exit status 2 and one ``error:`` line (the option's range, argparse's complaint, or the missing model), never a
    traceback and never a silent run."""
    import contextlib
    import io

    from diffimage.cli import main as image_main
    from diffwave.cli import main as wave_main

    option = data.draw(st.sampled_from(OPTIONS[command]))
    value = data.draw(NUMBERS)
    prog, sub = command.split()
    argv = [sub] + ([str(TMP / "m.npy")] if sub == "vocode" else []) + \
        ["-m", str(TMP / "no_model"), "--out", str(TMP / "fuzz_out"), f"{option}={value}"]
    np.save(TMP / "m.npy", np.full((80, 4), 0.5, np.float32))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = (image_main if prog == "diffimage" else wave_main)(argv)
    text = err.getvalue()
    assert code == 2, (argv, text)
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if "error: " in ln]
    assert len(lines) == 1, (argv, text)
    try:
        number = float(value)
    except ValueError:
        number = None
    bad = number is None or not math.isfinite(number) or (number < 0 and option != "--guidance-scale")
    if bad:  # NaN, ±inf, a negative count or a non-number: the error is about the option, not the model
        assert option in lines[0], (argv, lines[0])
    assert not (TMP / "fuzz_out").exists()


def _tiny_export() -> Path:
    from diffcore.checkpoint import save_checkpoint, export
    from diffwave.config import DiffWaveConfig
    from diffwave.model import DiffWave

    out = TMP / "tiny_export"
    if not out.is_dir():
        config = DiffWaveConfig.from_dict({"preset": "tiny", "residual_layers": 2, "residual_channels": 4,
                                           "dilation_cycle": 2, "embedding_hidden": 16})
        state = {"format": 1, "step": 1, "model": DiffWave(config).state_dict(), "ema": None,
                 "config": {"model": config.to_dict()}}
        save_checkpoint(state, TMP / "tiny_run" / "checkpoints", 1)
        export(TMP / "tiny_run", out)
    return out


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list) and node:
        for i, v in enumerate(node):
            yield from _leaves(v, path + (i,))
    yield path


@fuzz(150)
@given(st.data())
def test_tampered_export_configs_load_or_give_a_checkpoint_error(data):
    """A valid export's config.json with one entry replaced or deleted, or replaced wholesale: the loader builds a
    model or raises CheckpointError naming the folder; never another exception, never a huge allocation (size
    fields are bounded and the weights are checked against the config on the meta device first)."""
    import json

    from diffcore.checkpoint import CheckpointError
    from diffwave.api import load

    src = _tiny_export()
    config = json.loads((src / "config.json").read_text())
    kind = data.draw(st.sampled_from(["replace", "delete", "whole"]))
    if kind == "whole":
        config = data.draw(JSON)
    else:
        paths = [p for p in _leaves(config) if p]
        path = data.draw(st.sampled_from(paths))
        node = config
        for key in path[:-1]:
            node = node[key]
        if kind == "delete" and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = data.draw(JSON)
    folder = TMP / "tampered"
    folder.mkdir(exist_ok=True)
    try:
        (folder / "config.json").write_text(json.dumps(config))
    except ValueError:  # a float JSON cannot write
        return
    (folder / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    try:
        voc = load(folder, "cpu")
    except CheckpointError as e:
        assert "tampered" in str(e)
        return
    assert sum(p.numel() for p in voc.model.parameters()) == \
        sum(p.numel() for p in load(src, "cpu").model.parameters())


# ----------------------------------------------------------------------------------- issue 21: the third pass

_NAMES = st.sampled_from(["train", "model", "data", "lr", "x", "<<", "diffusion", "betas", "1", "preset"])


@st.composite
def yaml_constructions(draw):
    """YAML text built from anchors, aliases, merge keys, repeated keys and flow collections (the constructions
    that used to expand without limit or replace a section silently)."""
    lines, anchors = [], []
    for i in range(draw(st.integers(1, 8))):
        key = draw(_NAMES)
        kind = draw(st.sampled_from(["scalar", "anchor", "alias_list", "merge", "flow"]))
        if kind == "anchor" or not anchors:
            anchors.append(f"a{i}")
            items = ", ".join(draw(st.lists(st.sampled_from(["1", "x", "0.5", "null", "[]"]), max_size=6)))
            lines.append(f"{key}: &a{i} [{items}]")
        elif kind == "alias_list":
            refs = ", ".join(f"*{draw(st.sampled_from(anchors))}" for _ in range(draw(st.integers(1, 12))))
            anchors.append(f"a{i}")
            lines.append(f"{key}: &a{i} [{refs}]")
        elif kind == "merge":
            lines.append(f"{key}: {{<<: *{draw(st.sampled_from(anchors))}, lr: 1}}")
        elif kind == "flow":
            lines.append(f"{key}: {{lr: {draw(st.sampled_from(['1', '1e-4', 'nan', 'x']))}, lr: 2}}")
        else:
            lines.append(f"{key}: {draw(st.sampled_from(['1', 'x', '~', '[1, 2]', '{a: 1}']))}")
    return "\n".join(lines) + "\n"


@fuzz(120)
@given(yaml_constructions())
def test_recipes_built_from_aliases_merges_and_repeated_keys_load_or_are_config_errors(text):
    import tracemalloc

    path = TMP / "constructed.yaml"
    path.write_text(text)
    tracemalloc.start()
    try:
        load_recipe(DiffWaveRecipe, path)
    except ConfigError as e:
        assert len(str(e)) < 2000  # never the expanded value
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 100 * 2**20


@st.composite
def lying_npy(draw):
    """A .npy header whose shape, dtype or order may disagree with the bytes behind it."""
    shape = tuple(draw(st.lists(st.one_of(st.integers(0, 100), st.integers(0, 10**15)), min_size=0, max_size=4)))
    descr = draw(st.sampled_from(["<f4", ">f8", "<f2", "<i2", "|b1", "|u1", "<c8"]))
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": descr, "fortran_order": draw(st.booleans()), "shape": shape})
    return b.getvalue() + draw(st.binary(max_size=2000))


@fuzz(150)
@given(lying_npy())
def test_npy_mels_with_lying_headers_load_or_are_mel_errors_without_allocating_the_claim(data):
    import tracemalloc

    path = TMP / "lying.npy"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        mel = load_mel_file(path)
        assert mel.dtype == torch.float32 and mel.numel() * 4 <= len(data) * 8
    except MelError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 20 * 2**20


@st.composite
def damaged_weights(draw):
    """A state dict of two tensors, one of them of a random dtype and values (NaN, ±inf, huge, ordinary)."""
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8,
                                  torch.int64, torch.bool, torch.uint8]))
    value = draw(st.sampled_from([0.0, 1.0, -3.5, float("nan"), float("inf"), -float("inf"), 1e30]))
    t = torch.full((3,), value) if dtype.is_floating_point else torch.ones(3)
    return {"a": torch.zeros(2), "b": t.to(dtype) if dtype.is_floating_point or math.isfinite(value) else
            torch.ones(3).to(dtype)}


@fuzz(200)
@given(damaged_weights())
def test_weights_of_any_dtype_or_value_are_accepted_only_when_float_and_finite(weights):
    from diffcore.checkpoint import weights_problem

    b = weights["b"]
    ok = b.is_floating_point() and bool(torch.isfinite(b).all())
    problem = weights_problem(weights, {"a": torch.zeros(2), "b": torch.zeros(3)})
    assert (problem is None) == ok, (b, problem)
    if problem:
        assert problem.startswith("b ")


_ARGS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                  st.text(max_size=3), st.lists(st.one_of(st.integers(-2, 3), st.none(), st.booleans()), max_size=3),
                  st.just(torch.tensor(1.5)), st.just(np.int64(2)))


@fuzz(200)
@given(_ARGS, st.sampled_from(["count", "real", "generator", "array"]))
def test_api_argument_checks_return_a_valid_value_or_raise_argument_error(value, check):
    from diffcore.arguments import ArgumentError, check_count, check_generator, check_integer_array, check_real

    try:
        if check == "count":
            got = check_count("n", value, 1, 4)
            assert type(got) is int and 1 <= got <= 4 and not isinstance(value, (bool, float))
        elif check == "real":
            got = check_real("eta", value, 0.0, 10.0)
            assert type(got) is float and 0.0 <= got <= 10.0 and not isinstance(value, bool)
        elif check == "generator":
            assert check_generator("generator", value, torch.device("cpu")) is None and value is None
        else:
            got = check_integer_array("lengths", value)
            assert got.dtype == torch.int64 and got.ndim == 1
    except ArgumentError as e:
        assert str(e).split()[0] in ("n", "eta", "generator", "lengths") or str(e).startswith("lengths[")


@fuzz(16)
@given(st.integers(0, 4), st.sampled_from(["SIGTERM", "SIGINT"]), st.sampled_from(["grid", "images", "both"]))
def test_a_signal_after_any_file_of_sample_leaves_complete_files_and_a_true_manifest(after, signame, fmt):
    import json
    import os
    import signal
    import shutil

    import diffimage.grid as grid
    from diffimage.outputs import SampleInterrupted, write_sample_outputs

    out = TMP / "signal_out"
    shutil.rmtree(out, ignore_errors=True)
    images = torch.rand(3, 3, 4, 4) * 2 - 1
    real, calls = grid.save_png, []

    def save_then_signal(image, path):
        result = real(image, path)
        calls.append(path)
        if len(calls) == after + 1:
            os.kill(os.getpid(), getattr(signal, signame))
        return result

    grid.save_png = save_then_signal
    try:
        try:
            write_sample_outputs(images, out, fmt, {"n": 3})
            interrupted = False
        except SampleInterrupted as e:
            interrupted = True
            assert e.exit_code == 128 + getattr(signal, signame)
    finally:
        grid.save_png = real
    manifest = json.loads((out / "manifest.json").read_text())
    pngs = sorted(p.name for p in out.glob("sample_*.png"))
    assert manifest["complete"] is (not interrupted)
    assert pngs == [f"sample_{i:06d}.png" for i in range(manifest["images_written"])]
    assert (manifest["grid"] is not None) == (out / "grid.png").is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
