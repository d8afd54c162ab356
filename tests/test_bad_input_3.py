"""Bad input, third pass (issue 21): the classes of outside cases that broke the promise, one section per class.

The promise is README's Reliability section: one clear error naming the file or argument and the problem (exit
status 2 and one ``error:`` line for the commands), nothing partial written, nothing lost, no silently wrong result.
Classes: memory from small inputs (YAML aliases, huge recipes and overrides, array headers that lie), silent wrong
results (weights of the wrong dtype or non-finite, options against the model, duplicate YAML keys), tracebacks from
odd tensors and API calls, names and paths, data loss in output folders, degenerate training data, and interrupted
or stale outputs of ``diffimage sample``.
"""

from __future__ import annotations

import io
import os
import re
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import diffcore.config as dconfig
from diffcore.config import ConfigError, load_recipe
from diffwave.mel import MelConfig, MelError, load_mel_file, validate_mel
from diffwave.recipe import DiffWaveRecipe

from cli_helpers import error_line, image_cli, wave_cli  # noqa: F401  (used by later sections)


def _npy_bytes(shape: tuple[int, ...], dtype: str = "<f4", data: bytes = b"\0" * 4000) -> bytes:
    """A ``.npy`` file whose header claims ``shape`` followed by ``data`` (a lying header when they differ)."""
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": dtype, "fortran_order": False, "shape": shape})
    return b.getvalue() + data


def _peak_mib(fn) -> float:
    """Peak traced Python/numpy allocation (MiB) while ``fn()`` runs."""
    tracemalloc.start()
    try:
        fn()
    except Exception:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


# ======================================================================================= memory from small inputs

_BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))


def test_a_yaml_alias_bomb_recipe_is_refused_before_it_is_built_and_its_value_is_not_printed(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_BOMB)  # 500 bytes that expand to 9^9 = 387 million strings
    assert path.stat().st_size < 600
    with pytest.raises(ConfigError, match=r"bomb\.yaml.*aliases.*expand to more than 500000 values") as info:
        load_recipe(DiffWaveRecipe, path)
    assert "lol" not in str(info.value) and len(str(info.value)) < 300
    assert _peak_mib(lambda: load_recipe(DiffWaveRecipe, path)) < 50


@pytest.mark.parametrize("where", ["train", "model"])
def test_an_alias_bomb_or_a_huge_value_in_an_override_is_refused_naming_the_key(where):
    anchors = "[&a [1,1,1,1,1,1,1,1,1,1], " + ", ".join(
        f"&{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(7)) + "]"
    with pytest.raises(ConfigError, match=rf"override {where}\.lr=\.\.\..*expand to more than"):
        load_recipe(DiffWaveRecipe, None, [f"{where}.lr={anchors}"])
    long = "train.lr=[" + "1," * 600_000 + "1]"  # 1.2 MB on a command line
    with pytest.raises(ConfigError, match=r"override .* characters long, more than the limit") as info:
        load_recipe(DiffWaveRecipe, None, [long])
    assert len(str(info.value)) < 300


def test_a_value_under_the_node_limit_but_of_the_wrong_type_is_named_without_printing_it_whole():
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number, got \[0, 1, 2, 3, 4, 5, \.\.\.\]") as info:
        load_recipe(DiffWaveRecipe, None, ["train.lr=[" + ",".join(map(str, range(50_000))) + "]"])
    assert len(str(info.value)) < 300


def test_a_recipe_over_the_size_limit_is_refused_before_it_is_read_or_parsed(tmp_path, monkeypatch):
    path = tmp_path / "huge.yaml"
    with open(path, "w") as f:  # 5 MB of a valid list: it used to be parsed whole before the item limit
        f.write("diffusion:\n  betas:\n" + "  - 0.0001\n" * 480_000)
    monkeypatch.setattr(dconfig, "_load_yaml", lambda text: pytest.fail("the huge recipe was parsed"))
    with pytest.raises(ConfigError, match=r"huge\.yaml.*bytes is far too large for a recipe \(the limit is 4194304\)"):
        load_recipe(DiffWaveRecipe, path)


def test_a_recipe_that_is_a_fifo_a_device_or_a_folder_says_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "dir.yaml").mkdir()
    for path, what in [(tmp_path / "pipe.yaml", "is a FIFO"), ("/dev/null", "is a device"),
                       (tmp_path / "dir.yaml", "is a folder"), (tmp_path / "none.yaml", "does not exist")]:
        with pytest.raises(ConfigError, match=rf"{what}"):
            load_recipe(DiffWaveRecipe, path)


def test_a_legitimate_recipe_with_aliases_and_merge_keys_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"  # an anchor reused, and a merge key (<<) overridden by the mapping's own key
    path.write_text("model: &m {residual_layers: 4, residual_channels: 8}\ntrain: {lr: 0.002, batch_size: 4}\n")
    recipe = load_recipe(DiffWaveRecipe, path)
    assert recipe.train.lr == 0.002 and recipe.model.residual_layers == 4
    data = dconfig._load_yaml("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  p: 3\nc: [*x, *x]\n")
    assert data == {"a": {"p": 1, "q": 2}, "b": {"p": 3, "q": 2}, "c": [{"p": 1, "q": 2}] * 2}


@pytest.mark.parametrize("shape", [(80, 2_000_000), (80, 1000), (10**12,), (80, 10**15)])
def test_a_npy_mel_whose_header_lies_about_its_shape_is_refused_before_anything_is_allocated(tmp_path, shape):
    path = tmp_path / "liar.npy"
    path.write_bytes(_npy_bytes(shape))  # 4 kB of data behind a header claiming up to petabytes
    with pytest.raises(MelError, match=r"liar\.npy: .*(truncated or forged|longer than the limit)"):
        load_mel_file(path)
    assert _peak_mib(lambda: load_mel_file(path)) < 10


def test_a_mel_longer_than_an_hour_of_the_models_audio_is_refused_in_the_file_and_in_the_api(tmp_path):
    config = MelConfig()  # 22,050 Hz, hop 256: one hour is 310,079 frames
    path = tmp_path / "six_hours.npy"
    path.write_bytes(_npy_bytes((80, 2_000_000)))
    with pytest.raises(MelError, match=r"six_hours\.npy: its header claims 2000000 frames.*limit of 310079 frames"):
        load_mel_file(path, config)
    with pytest.raises(MelError, match=r"mel: 310080 frames stand for 3600 s.*limit of 3600 s"):
        validate_mel(torch.zeros(1, 80, 310_080).expand(1, 80, 310_080)[0], config, source="mel")
    validate_mel(torch.zeros(80, 1000), config, source="mel")  # a normal mel still passes


def test_a_real_mel_file_still_loads_exactly_in_every_form(tmp_path):
    m = np.random.default_rng(0).random((80, 37), dtype=np.float32)
    np.save(tmp_path / "a.npy", m)
    np.save(tmp_path / "big_endian.npy", m.astype(">f8"))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(m))
    torch.save(torch.from_numpy(m), tmp_path / "b.pt")
    torch.save({"mel": torch.from_numpy(m)}, tmp_path / "c.pt")
    torch.save(torch.from_numpy(m), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("a.npy", "big_endian.npy", "fortran.npy", "b.pt", "c.pt", "legacy.pt"):
        got = load_mel_file(tmp_path / name)
        assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(m)), name


def _forged_npz(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)


def test_an_npz_image_set_claiming_a_trillion_images_is_a_value_error_naming_the_file(tmp_path):
    from diffimage.data import NpzImageDataset

    path = tmp_path / "liar.npz"
    _forged_npz(path, {"images": _npy_bytes((10**12, 28, 28), "|u1")})
    with pytest.raises(ValueError, match=r"liar\.npz.*array 'images'.*claims shape \[1000000000000, 28, 28\]"):
        NpzImageDataset(path)
    assert _peak_mib(lambda: NpzImageDataset(path)) < 10
    _forged_npz(path, {"images": _npy_bytes((4, 8, 8), "|u1", b"\0" * 256), "labels": _npy_bytes((10**9,), "<i8")})
    with pytest.raises(ValueError, match=r"liar\.npz.*array 'labels'.*truncated or forged"):
        NpzImageDataset(path)


def test_an_npz_image_set_that_unpacks_beyond_the_limit_is_refused_and_a_limit_reads_only_its_images(
        tmp_path, monkeypatch):
    import diffimage.data as ddata
    from diffimage.data import NpzImageDataset

    images = np.arange(2000 * 16 * 16, dtype=np.int64).astype(np.uint8).reshape(2000, 16, 16)
    np.savez_compressed(tmp_path / "bomb.npz", images=images, labels=np.arange(2000) % 10)
    assert (tmp_path / "bomb.npz").stat().st_size < 200_000
    monkeypatch.setattr(ddata, "MAX_IMAGE_ARCHIVE_BYTES", 100_000)  # the set unpacks to 528 kB
    with pytest.raises(ValueError, match=r"bomb\.npz.*unpacks to 528,000 bytes, more than the limit of 100,000"):
        NpzImageDataset(tmp_path / "bomb.npz")
    ds = NpzImageDataset(tmp_path / "bomb.npz", limit=10)  # 10 images fit: only those are decompressed
    assert len(ds) == 10 and torch.equal(ds.images[:, 0], torch.from_numpy(images[:10]))
    assert ds.labels.tolist() == list(range(10))


def test_a_cached_mel_whose_header_lies_is_ignored_without_reading_it(tmp_path):
    from diffwave.preprocess import read_cached_mel

    path = tmp_path / "cached.npy"
    path.write_bytes(_npy_bytes((80, 2_000_000)))
    assert read_cached_mel(path, MelConfig()) is None
    assert _peak_mib(lambda: read_cached_mel(path, MelConfig())) < 10
    path.write_bytes(_npy_bytes((80, 50), data=b"\0" * 100))  # the right shape, but truncated
    assert read_cached_mel(path, MelConfig()) is None
    np.save(path, np.ones((80, 5), np.float32))
    assert torch.equal(read_cached_mel(path, MelConfig()), torch.ones(80, 5))


# ================================================================== silent wrong results from bad weights and options

TINY_UNET = {"preset": "tiny", "image_size": 8, "channel_mult": [1], "attention_resolutions": [8],
             "diffusion": {"num_steps": 20}}


@pytest.fixture(scope="module")
def image_model():
    from diffimage.api import ImageModel
    from diffimage.config import UNetConfig
    from diffimage.model import UNet

    torch.manual_seed(0)
    return ImageModel(UNet(UNetConfig.from_dict(TINY_UNET)), "tiny")


@pytest.fixture(scope="module")
def image_export(image_model, tmp_path_factory) -> Path:
    return image_model.save(tmp_path_factory.mktemp("image_export") / "export")


@pytest.fixture(scope="module")
def wave_export(tmp_path_factory) -> Path:
    from diffwave.api import Vocoder
    from diffwave.config import DiffWaveConfig
    from diffwave.model import DiffWave

    torch.manual_seed(0)
    config = DiffWaveConfig.from_dict({"preset": "tiny", "residual_layers": 2, "residual_channels": 4,
                                       "dilation_cycle": 2, "embedding_hidden": 16})
    return Vocoder(DiffWave(config), "tiny").save(tmp_path_factory.mktemp("wave_export") / "export")


def _tampered(export_dir: Path, out: Path, change) -> Path:
    """A copy of an export folder whose first floating-point tensor is replaced by ``change(tensor)``."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    (out / "config.json").write_text((export_dir / "config.json").read_text())
    weights = load_file(str(export_dir / "model.safetensors"))
    key = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    weights[key] = change(weights[key])
    save_file(weights, str(out / "model.safetensors"))
    return out


_DAMAGE = {
    "nan": (lambda w: w.clone().index_fill_(0, torch.tensor([0]), float("nan")), r"non-finite values \(NaN or Inf\)"),
    "inf": (lambda w: torch.full_like(w, float("inf")), r"non-finite values"),
    "int8": (lambda w: (w * 100).to(torch.int8), r"has dtype int8; the model's weights are floating point"),
    "bool": (lambda w: w > 0, r"has dtype bool"),
    "int64": (lambda w: w.long(), r"has dtype int64"),
}


@pytest.mark.parametrize("damage", sorted(_DAMAGE))
@pytest.mark.parametrize("package", ["diffwave", "diffimage"])
def test_an_export_with_non_finite_or_non_float_weights_is_refused_at_load_in_both_packages(
        tmp_path, damage, package, request):
    from diffcore.checkpoint import CheckpointError

    change, message = _DAMAGE[damage]
    source = request.getfixturevalue("wave_export" if package == "diffwave" else "image_export")
    bad = _tampered(source, tmp_path / "bad", change)
    load = __import__(f"{package}.api", fromlist=["load"]).load
    with pytest.raises(CheckpointError, match=rf"bad: damaged weights: .*{message}"):
        load(bad, "cpu")
    load(source, "cpu")  # the untouched export still loads


def test_a_checkpoint_with_nan_weights_is_refused_and_fp16_weights_still_load(tmp_path, wave_export):
    from diffcore.checkpoint import CheckpointError, save_checkpoint
    from diffwave.api import Vocoder, load

    voc = load(wave_export, "cpu")
    state = {k: v.clone() for k, v in voc.model.state_dict().items()}
    next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
    save_checkpoint({"format": 1, "step": 1, "model": state, "ema": None, "config": voc.info}, tmp_path / "run", 1)
    with pytest.raises(CheckpointError, match=r"damaged weights: .*non-finite"):
        load(tmp_path / "run", "cpu")
    half = voc.save(tmp_path / "half", dtype=torch.float16)
    assert isinstance(load(half, "cpu"), Vocoder)


def test_the_image_api_refuses_non_finite_or_out_of_range_options_like_the_command_line(image_model):
    from diffcore.arguments import ArgumentError

    for kwargs, message in [
        ({"eta": float("nan")}, r"eta must be a finite number in \[0.0, 10.0\], got nan"),
        ({"eta": float("inf")}, r"eta must be a finite number"),
        ({"eta": -1.0}, r"eta must be"),
        ({"guidance_scale": float("nan")}, r"guidance_scale must be a finite number"),
        ({"steps": 5000}, r"steps=5000 is more than the model's T = 20 diffusion steps"),
        ({"steps": 21, "sampler": "ddpm"}, r"steps=21 is more than the model's T = 20"),
        ({"steps": 0}, r"steps must be in \[1, 100000\], got 0"),
        ({"sampler": "euler"}, r"sampler must be one of ddim, ddpm, heun, dpmpp, got 'euler'"),
    ]:
        with pytest.raises(ArgumentError, match=message):
            image_model.sample(2, **kwargs)
    x = image_model.sample(2, steps=20, generator=torch.Generator().manual_seed(0))  # exactly T is fine
    assert x.shape == (2, 3, 8, 8) and bool(torch.isfinite(x).all())


def test_the_image_command_refuses_more_steps_than_the_model_has_and_writes_nothing(tmp_path, capsys, image_export):
    out = tmp_path / "samples"
    code, err = image_cli(capsys, "sample", "-m", image_export, "--n", "2", "--steps", "5000", "--out", out,
                          "--device", "cpu")
    assert code == 2
    error_line(err, "steps=5000 is more than the model's T = 20")
    assert not out.exists() or not any(out.iterdir())


def test_bits_per_dim_refuses_images_of_another_size_or_channels_and_an_empty_batch(image_model):
    from diffcore.arguments import ArgumentError

    for images, message in [
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), r"shape \[2, 3, 16, 16\] do not fit this model, which makes "
                                                       r"\[N, 3, 8, 8\]"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), r"do not fit"),
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), r"do not fit"),
        (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), r"empty batch"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int32), r"uint8 or float"),
        (torch.full((2, 3, 8, 8), 200.0), r"float images must lie in \[-1, 1\]"),
        (torch.full((2, 3, 8, 8), float("nan")), r"non-finite"),
        ("images.npz", r"images must be a tensor"),
    ]:
        with pytest.raises(ArgumentError, match=message):
            image_model.bits_per_dim(images)


def test_vocoder_mel_refuses_integer_samples_instead_of_clamping_them(wave_export):
    from diffcore.arguments import ArgumentError
    from diffwave.api import load

    voc = load(wave_export, "cpu")
    x = (np.sin(np.arange(4096) / 10) * 20000).astype(np.int16)
    with pytest.raises(ArgumentError, match=r"wav has dtype int16; float samples in \[-1, 1\] are needed: divide by "
                                            r"its full scale first \(wav / 32768\)"):
        voc.mel(x)
    with pytest.raises(ArgumentError, match=r"dtype torch.int32"):
        voc.mel(torch.from_numpy(x.astype(np.int32)))
    with pytest.raises(ArgumentError, match=r"dtype bool"):
        voc.mel(x > 0)
    with pytest.raises(ArgumentError, match=r"non-finite samples"):
        voc.mel(np.full(4096, np.nan, np.float32))
    # the clear rule gives the same mel as the float samples it stands for
    assert torch.equal(voc.mel(x / 32768.0), voc.mel(torch.from_numpy(x.astype(np.float64) / 32768)))


def test_lengths_of_bools_or_floats_are_refused_not_read_as_one_frame(wave_export):
    from diffcore.arguments import ArgumentError
    from diffwave.api import load

    voc = load(wave_export, "cpu")
    mel = torch.rand(2, 80, 6)
    for lengths, message in [([True, True], r"lengths\[0\] must be an integer, got True \(a bool\)"),
                             (torch.tensor([True, True]), r"lengths must hold integers, got dtype torch.bool"),
                             (np.array([True, False]), r"dtype torch.bool"),
                             ([6.0, 3.0], r"lengths\[0\] must be an integer, got 6.0"),
                             ([6, None], r"lengths\[1\] must be an integer, got None")]:
        with pytest.raises(ArgumentError, match=message):
            voc.vocode(mel, lengths=lengths)


def test_duplicate_yaml_keys_are_refused_naming_the_key_and_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  lr: 0.001\nmodel:\n  residual_layers: 4\ntrain:\n  batch_size: 2\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml.*key 'train' is given twice in one mapping \(lines 1 and 5\)"):
        load_recipe(DiffWaveRecipe, path)
    path.write_text("train:\n  lr: 0.001\n  lr: 0.002\n")
    with pytest.raises(ConfigError, match=r"key 'lr' is given twice"):
        load_recipe(DiffWaveRecipe, path)
    with pytest.raises(ConfigError, match=r"override train=\.\.\..*key 'lr' is given twice"):
        load_recipe(DiffWaveRecipe, None, ["train={lr: 1, lr: 2}"])


def test_weights_damaged_after_loading_give_an_error_not_nan_audio_or_images(wave_export, image_model):
    import copy

    from diffwave.api import load

    voc = load(wave_export, "cpu")
    with torch.no_grad():
        next(voc.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"produced \d+ non-finite samples"):
        voc.vocode(torch.rand(80, 4))
    broken = copy.deepcopy(image_model)
    with torch.no_grad():
        for p in broken.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"produced \d+ non-finite values"):
        broken.sample(1, steps=2)


# ======================================================================= tracebacks from odd tensors and API calls


def _odd_mels(folder: Path) -> dict[str, str]:
    """Mel files holding tensors torch loads but a vocoder cannot use, and the words their error must hold."""
    folder.mkdir(parents=True, exist_ok=True)
    dense = torch.rand(80, 6) * 0.6 + 0.2
    torch.save(dense.to_sparse(), folder / "sparse.pt")
    with warnings.catch_warnings():  # torch: "Sparse CSR tensor support is in beta state" (once per process)
        warnings.simplefilter("ignore")
        torch.save(dense.to_sparse_csr(), folder / "csr.pt")
        torch.save(torch.quantize_per_tensor(dense, 0.01, 0, torch.quint8), folder / "quantized.pt")
    torch.save(torch.empty(80, 6, device="meta"), folder / "meta.pt")
    torch.save({"mel": dense.to_sparse()}, folder / "dict_sparse.pt")
    torch.save([dense], folder / "list.pt")
    return {"sparse.pt": "sparse_coo (sparse) tensor", "csr.pt": "sparse_csr (sparse) tensor",
            "meta.pt": "meta tensor", "dict_sparse.pt": "sparse_coo", "quantized.pt": "quantized tensor",
            "list.pt": "holds a list, not an array"}


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")
@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_sparse_csr_meta_and_quantized_mel_files_are_one_clear_error_each(tmp_path):
    for name, words in _odd_mels(tmp_path).items():
        with pytest.raises(MelError, match=rf"{re.escape(name)}: .*{re.escape(words)}"):
            load_mel_file(tmp_path / name)
    config = MelConfig()
    for tensor, words in [(torch.rand(80, 6).to_sparse(), "sparse_coo"), (torch.empty(80, 6, device="meta"), "meta")]:
        with pytest.raises(MelError, match=rf"mel: .*{words}"):
            validate_mel(tensor, config, source="mel")


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")
@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_in_a_folder_each_odd_tensor_file_is_reported_and_skipped_and_the_good_mels_are_vocoded(
        tmp_path, capsys, wave_export):
    inputs = tmp_path / "in"
    expected = _odd_mels(inputs)
    np.save(inputs / "good.npy", np.random.default_rng(0).uniform(0.2, 0.8, (80, 6)).astype(np.float32))
    out = tmp_path / "out"
    code, err = wave_cli(capsys, "vocode", inputs, "-m", wave_export, "--out", out, "--device", "cpu")
    assert code != 0 and "Traceback" not in err
    for name, words in expected.items():
        assert name in err and words in err, (name, err)
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["good.wav"]


def test_the_vocoder_api_names_the_argument_for_wrong_types(wave_export):
    from diffcore.arguments import ArgumentError
    from diffwave.api import load

    voc = load(wave_export, "cpu")
    mel = torch.rand(80, 6) * 0.6 + 0.2
    for call, error, message in [
        (lambda: voc.vocode([mel, None]), MelError,
         r"mel\[1\]: expected a numpy array or a torch tensor, got NoneType"),
        (lambda: voc.vocode("speech.npy"), MelError, r"mel: expected .* got a path \(load it with .*load_mel_file\)"),
        (lambda: voc.vocode(mel, generator=0), ArgumentError, r"generator must be a torch.Generator or None, got 0 "
                                                               r"\(an int\); for a seed write torch.Generator"),
        (lambda: voc.vocode(mel, steps="fst"), ArgumentError, r"steps must be 'fast' or 'full', got 'fst'"),
        (lambda: voc.vocode(mel, batch_size=0), ArgumentError, r"batch_size must be at least 1, got 0"),
        (lambda: voc.vocode(mel, max_frames=2.5), ArgumentError, r"max_frames must be an integer, got 2.5"),
        (lambda: voc.vocode(mel.to_sparse()), MelError, r"mel: is a sparse_coo"),
        (lambda: voc.mel("speech.wav"), ArgumentError, r"wav must be samples .* got the path 'speech.wav'.*load_audio"),
        (lambda: voc.mel([0.1, 0.2]), ArgumentError, r"wav must be a tensor or numpy array of float samples, got "
                                                     r"\[0.1, 0.2\] \(a list\)"),
        (lambda: voc.mel(torch.zeros(3)), ArgumentError, r"too short"),
    ]:
        with pytest.raises(error, match=message):
            call()
    assert voc.vocode([]) == []


@pytest.fixture(scope="module")
def conditional_model():
    from diffimage.api import ImageModel
    from diffimage.config import UNetConfig
    from diffimage.model import UNet

    torch.manual_seed(0)
    return ImageModel(UNet(UNetConfig.from_dict({**TINY_UNET, "num_classes": 3})), "tiny-cond")


def test_the_image_api_names_the_argument_for_wrong_types(image_model, conditional_model):
    from diffcore.arguments import ArgumentError

    for model, call, message in [
        (image_model, lambda m: m.sample(0), r"n must be in \[1, 1000000\], got 0"),
        (image_model, lambda m: m.sample(2.0), r"n must be an integer, got 2.0 \(a float\)"),
        (image_model, lambda m: m.sample(True), r"n must be an integer, got True \(a bool\)"),
        (image_model, lambda m: m.sample("4"), r"n must be an integer, got '4' \(a str\)"),
        (image_model, lambda m: m.sample(2, generator=0), r"generator must be a torch.Generator or None, got 0"),
        (image_model, lambda m: m.sample(2, batch_size=0), r"batch_size must be at least 1, got 0"),
        (image_model, lambda m: m.sample_seeded(2, seed=-1), r"seed must be in \[0, "),
        (image_model, lambda m: m.sample_seeded(2, seed=1.5), r"seed must be an integer"),
        (conditional_model, lambda m: m.sample(2, classes=[1, None]), r"classes\[1\] must be an integer, got None"),
        (conditional_model, lambda m: m.sample(2, classes=[1.5, 2]), r"classes\[0\] must be an integer, got 1.5"),
        (conditional_model, lambda m: m.sample(2, classes=True), r"classes must be a list of integers, got True"),
        (conditional_model, lambda m: m.sample(2, classes=torch.tensor([0.5, 1.0])), r"classes must hold integers"),
        (conditional_model, lambda m: m.sample(2, classes="1,2"),
         r"classes must be a list of integers, got '1,2' \(a str\)"),
        (image_model, lambda m: m.bits_per_dim(torch.zeros(0, 3, 8, 8, dtype=torch.uint8)), r"empty batch"),
        (image_model, lambda m: m.bits_per_dim(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), generator=1),
         r"generator must be"),
        (conditional_model, lambda m: m.bits_per_dim(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), labels=[1]),
         r"labels holds 1 labels for 2 images"),
    ]:
        with pytest.raises(ArgumentError, match=message):
            call(model)
    x = conditional_model.sample(2, classes=[0, 2], steps=2, generator=torch.Generator().manual_seed(1))
    assert x.shape == (2, 3, 8, 8)


# ============================================================================================== names and paths


@pytest.mark.parametrize("package, name", [("diffwave", "ljspeech-tiny"), ("diffimage", "mnist-small")])
def test_a_local_folder_named_like_a_shipped_model_does_not_replace_it_silently(
        tmp_path, monkeypatch, caplog, package, name, request):
    api = __import__(f"{package}.api", fromlist=["load"])
    local = request.getfixturevalue("wave_export" if package == "diffwave" else "image_export")
    assert name in api.available_models()
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()
    for f in ("config.json", "model.safetensors"):
        (tmp_path / name / f).write_bytes((local / f).read_bytes())
    with caplog.at_level("WARNING"):
        shipped = api.load(name, "cpu")
    shipped_dir = __import__(f"{package}.pretrained", fromlist=["SHIPPED"]).SHIPPED.folder / name
    assert shipped.config == api.load(shipped_dir, "cpu").config  # the shipped model, as documented
    assert f"{name!r} is the name of a shipped" in caplog.text
    assert f"write ./{name} to load the local one" in caplog.text
    mine = api.load(f"./{name}", "cpu")  # written as a path: the local folder
    assert mine.config == api.load(local, "cpu").config != shipped.config


def test_empty_paths_on_the_command_line_and_in_the_api_are_refused_not_read_as_the_working_directory(
        tmp_path, capsys, monkeypatch, wave_export, image_export):
    from diffcore.checkpoint import CheckpointError
    from diffimage.api import load as load_image
    from diffwave.api import load as load_wave

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "m.npy", np.full((80, 6), 0.5, np.float32))  # something the working directory would vocode
    for cli, args, words in [
        (wave_cli, ["vocode", "", "-m", wave_export, "--out", tmp_path / "o"], "argument 1 is empty"),
        (wave_cli, ["vocode", tmp_path / "m.npy", "-m", wave_export, "--out", ""], "--out is an empty path"),
        (wave_cli, ["vocode", tmp_path / "m.npy", "-m", "", "--out", tmp_path / "o"], "-m is an empty path"),
        (wave_cli, ["vocode", tmp_path / "m.npy", "-m", wave_export, "--out="], "--out= is an empty path"),
        (image_cli, ["sample", "-m", image_export, "--out", "", "--n", "1"], "--out is an empty path"),
        (image_cli, ["sample", "-m", "  ", "--out", tmp_path / "o", "--n", "1"], "-m is an empty path"),
    ]:
        code, err = cli(capsys, *args)
        assert code == 2, err
        error_line(err, words, "unset variable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy"]  # nothing was written anywhere
    for load in (load_wave, load_image):
        with pytest.raises(CheckpointError, match=r"an empty model path \(an unset variable\?\)"):
            load("")


def test_a_fifo_a_device_or_a_folder_given_as_a_file_says_what_it_is(tmp_path, capsys, wave_export):
    from diffcore.checkpoint import CheckpointError, load_checkpoint
    from diffwave.api import load
    from diffwave.audio import AudioError, load_audio

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    code, err = wave_cli(capsys, "vocode", fifo, "-m", wave_export, "--out", tmp_path / "o")
    assert code == 2
    error_line(err, "pipe.wav", "is a FIFO (named pipe)")
    code, err = wave_cli(capsys, "vocode", "/dev/null", "-m", wave_export, "--out", tmp_path / "o")
    assert code == 2
    error_line(err, "/dev/null", "is a device")
    with pytest.raises(AudioError, match=r"pipe\.wav: is a FIFO"):
        load_audio(fifo)
    with pytest.raises(CheckpointError, match=r"pipe\.wav: is a FIFO.*a model is a run folder"):
        load(fifo, "cpu")
    with pytest.raises(CheckpointError, match=r"null: is a device"):
        load("/dev/null", "cpu")
    with pytest.raises(CheckpointError, match=rf"{tmp_path.name}: is a folder, not a file"):
        load_checkpoint(tmp_path)
    with pytest.raises(MelError, match=r"pipe\.wav: is a FIFO"):
        load_mel_file(fifo)
    from diffwave.audio import list_audio_files

    with pytest.raises(AudioError, match=r"pipe\.wav: is a FIFO \(named pipe\), not a folder or a file list"):
        list_audio_files(fifo)
    from diffimage.data import ImageFolderDataset, NpzImageDataset

    with pytest.raises(ValueError, match=r"pipe\.wav' is a FIFO"):
        NpzImageDataset(fifo)
    with pytest.raises(ValueError, match=r"image folder .*pipe\.wav' is a FIFO \(named pipe\), not a folder"):
        ImageFolderDataset(fifo)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["x.png", "grid.jpg", "out.json"])
def test_sample_out_with_an_image_file_name_is_refused_instead_of_making_a_folder(tmp_path, capsys, image_export,
                                                                                   name):
    code, err = image_cli(capsys, "sample", "-m", image_export, "--out", tmp_path / name, "--n", "1")
    assert code == 2
    error_line(err, name, "names a folder", "give a folder")
    assert not (tmp_path / name).exists()
    (tmp_path / "ok.png").mkdir()  # an existing folder of that name is a folder: it is used
    code, err = image_cli(capsys, "sample", "-m", image_export, "--out", tmp_path / "ok.png", "--n", "1",
                          "--steps", "2", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "ok.png" / "grid.png").is_file()


# ==================================================================================================== data loss


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_export_is_never_written_over_an_export_of_another_kind_of_model(tmp_path, capsys, wave_export,
                                                                              image_export):
    import shutil

    from diffcore.checkpoint import CheckpointError, save_checkpoint
    from diffimage.api import load as load_image
    from diffwave.api import load as load_wave

    target = tmp_path / "shared"
    shutil.copytree(image_export, target)  # an earlier diffimage export
    before = _files(target)
    voc = load_wave(wave_export, "cpu")
    with pytest.raises(CheckpointError, match=r"shared: holds an export of another kind of model"):
        voc.save(target)
    run = tmp_path / "run"
    save_checkpoint({"format": 1, "step": 1, "model": voc.model.state_dict(), "ema": None, "config": voc.info},
                    run / "checkpoints", 1)
    code, err = wave_cli(capsys, "export", run, "--out", target)
    assert code == 2
    error_line(err, "shared", "another kind of model")
    with pytest.raises(CheckpointError, match=r"another kind of model"):
        load_image(image_export, "cpu").save(shutil.copytree(wave_export, tmp_path / "wave_copy"))
    assert _files(target) == before  # nothing of the diffimage export was touched
    code, err = wave_cli(capsys, "export", run, "--out", tmp_path / "again")
    assert code == 0, err
    code, err = wave_cli(capsys, "export", run, "--out", tmp_path / "again")  # the same kind: replaced, as before
    assert code == 0, err


def test_an_export_is_not_written_over_files_that_only_look_like_an_export(tmp_path, wave_export):
    from diffcore.checkpoint import CheckpointError
    from diffwave.api import load

    voc = load(wave_export, "cpu")
    for name, config in [("notes", '{"author": "me"}'), ("junk", "not json")]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(config)
        (folder / "model.safetensors").write_bytes(b"my weights")
        with pytest.raises(CheckpointError, match=rf"{name}: its config.json is not an export's"):
            voc.save(folder)
        assert (folder / "model.safetensors").read_bytes() == b"my weights"
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.safetensors").write_bytes(b"mine")
    with pytest.raises(CheckpointError, match=r"lone: holds model.safetensors without an export's config.json"):
        voc.save(lone)


@pytest.mark.parametrize("foreign", [{"grid.png": b"my drawing"}, {"manifest.json": b'{"project": "x"}'},
                                     {"sample_000000.png": b"mine", "notes.txt": b"keep"},
                                     {"grid.png": b"g", "manifest.json": b"not json"}])
def test_sample_refuses_a_folder_with_another_tools_grid_or_manifest_and_keeps_them(tmp_path, capsys, image_export,
                                                                                    foreign):
    out = tmp_path / "out"
    out.mkdir()
    for name, data in foreign.items():
        (out / name).write_bytes(data)
    code, err = image_cli(capsys, "sample", "-m", image_export, "--out", out, "--n", "2", "--steps", "2",
                          "--device", "cpu", "--format", "both")
    assert code == 2
    error_line(err, str(out), "already holds", "not replaced")
    assert _files(out) == foreign


# ================================================================ interrupted writes and stale outputs of sample


def _sample(capsys, image_export, out, *extra):
    return image_cli(capsys, "sample", "-m", image_export, "--out", out, "--steps", "2", "--device", "cpu", *extra)


def test_a_rerun_with_a_smaller_n_leaves_no_old_images_and_cleans_earlier_temporaries(tmp_path, capsys, image_export):
    import json

    out = tmp_path / "out"
    code, err = _sample(capsys, image_export, out, "--n", "4", "--format", "both")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "manifest.json"] + [
        f"sample_{i:06d}.png" for i in range(4)]
    (out / ".sample_000003.png.k2j3.tmp").write_bytes(b"half")  # left by a killed earlier run
    (out / ".notes.txt.abc.tmp").write_bytes(b"not ours")
    (out / "notes.txt").write_bytes(b"mine")
    code, err = _sample(capsys, image_export, out, "--n", "2", "--format", "images")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [".notes.txt.abc.tmp", "manifest.json", "notes.txt",
                                                      "sample_000000.png", "sample_000001.png"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["tool"], manifest["n"], manifest["complete"], manifest["images_written"], manifest["grid"]) == \
        ("diffimage sample", 2, True, 2, None)


@pytest.mark.parametrize("signum, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_while_writing_finishes_the_file_in_flight_writes_a_manifest_of_what_is_done_and_exits_128_plus(
        tmp_path, capsys, monkeypatch, image_export, signum, code):
    import json
    import signal

    import diffimage.grid as grid

    real = grid.save_png
    calls = []

    def save_png_then_signal(image, path):
        result = real(image, path)
        calls.append(path)
        if len(calls) == 3:
            os.kill(os.getpid(), getattr(signal, signum))  # while the third file (the 2nd image) is written
        return result

    monkeypatch.setattr(grid, "save_png", save_png_then_signal)
    out = tmp_path / "out"
    status, err = _sample(capsys, image_export, out, "--n", "8", "--format", "both", "--batch-size", "8")
    assert status == code
    error_line(err, f"interrupted by {signum}", "grid.png, 2 of 8 images", '"complete": false')
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "manifest.json", "sample_000000.png",
                                                      "sample_000001.png"]  # no temporary file, no partial image
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["complete"], manifest["images_written"], manifest["grid"]) == (False, 2, "grid.png")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are restored
    status, err = _sample(capsys, image_export, out, "--n", "8", "--format", "both", "--batch-size", "8")
    assert status == 0, err  # the rerun replaces the partial run's outputs
    assert len(list(out.glob("sample_*.png"))) == 8


# ================================================================================= degenerate training data

_WAVE_RECIPE = {"model": {"preset": "tiny", "residual_layers": 2, "residual_channels": 4, "dilation_cycle": 2,
                          "embedding_hidden": 16},
                "data": {"crop_frames": 8},
                "train": {"max_steps": 2, "batch_size": 2, "num_workers": 0, "device": "cpu", "progress": False,
                          "tensorboard": False, "ckpt_every": 0, "log_every": 1}}


def _clips(folder: Path, kinds: list[str]) -> list[Path]:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, kind in enumerate(kinds):
        path = folder / f"clip{i}.wav"
        if kind == "silent":
            sf.write(path, np.zeros(8192, np.float32), 22050)
        elif kind == "junk":
            path.write_bytes(b"RIFF junk" * 20)
        else:
            sf.write(path, (0.3 * np.sin(np.arange(8192) * (0.05 + 0.01 * i))).astype(np.float32), 22050)
        out.append(path)
    return out


def _recipe(tmp_path: Path, **data) -> Path:
    import yaml

    recipe = {**_WAVE_RECIPE, "data": {**_WAVE_RECIPE["data"], **data}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_all_silent_training_data_is_one_error_before_the_first_step_and_writes_nothing(tmp_path, capsys):
    _clips(tmp_path / "silent", ["silent"] * 4)
    run = tmp_path / "run"
    code, err = wave_cli(capsys, "train", "--recipe", _recipe(tmp_path, path=str(tmp_path / "silent")),
                         "--run-dir", run)
    assert code == 2
    error_line(err, "the training data cannot be used", "every one of its 4 file(s) failed to load",
               "nothing was written")
    assert "silent" in err  # the warnings name why each clip was skipped
    assert not run.exists() or not any(run.rglob("*.pt")) and not (run / "config.yaml").exists()


def test_a_first_example_with_non_finite_values_or_an_empty_data_set_is_refused_before_training(tmp_path):
    from diffcore.train import Trainer
    from diffcore.train.datacheck import check_first_example
    from diffcore.train.toy import ToyTask

    with pytest.raises(ConfigError, match=r"the training data set is empty"):
        check_first_example([])
    with pytest.raises(ConfigError, match=r"non-finite values in x"):
        check_first_example([{"x": torch.tensor([1.0, float("nan")])}])
    check_first_example([{"x": torch.ones(2)}])  # a usable example passes

    class Broken(ToyTask):
        def train_dataset(self):
            return [{"x": torch.full((2,), float("inf"))}] * 8

    from diffcore.train import TrainConfig

    cfg = TrainConfig(max_steps=2, batch_size=4, num_workers=0, device="cpu", progress=False, tensorboard=False)
    with pytest.raises(ConfigError, match=r"non-finite"):
        Trainer(Broken(), cfg, tmp_path / "run").fit()
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "config.yaml").exists()


def test_a_held_out_split_of_only_unusable_clips_is_refused_and_a_partly_broken_one_is_named(tmp_path, caplog):
    from diffwave.data import check_heldout, split_files
    from diffwave.recipe import DataConfig, holdout_indices

    held = set(holdout_indices(6, 2, DataConfig().holdout_scheme))
    kinds = ["junk" if i in held else "good" for i in range(6)]
    _clips(tmp_path / "data", kinds)
    with pytest.raises(ConfigError, match=r"data.holdout: all 2 held-out clip\(s\) are unusable \(first: .*clip"):
        split_files(DataConfig(path=str(tmp_path / "data"), holdout=2))
    good, junk = _clips(tmp_path / "mixed", ["good", "junk"])
    with caplog.at_level("WARNING"):
        check_heldout([good, junk])
    assert "held-out split: " in caplog.text and "clip1.wav" in caplog.text and "the other 1 clip(s)" in caplog.text
    train, heldout = split_files(DataConfig(path=str(tmp_path / "data"), holdout=0))
    assert len(train) == 6 and heldout == []


def test_preprocess_that_computed_no_mel_does_not_advise_training_on_the_cache(tmp_path, capsys):
    _clips(tmp_path / "junk", ["junk", "silent"])
    from diffwave.cli import main

    code = main(["preprocess", "--data", str(tmp_path / "junk"), "--out", str(tmp_path / "cache"), "--workers", "0"])
    captured = capsys.readouterr()
    assert code == 1
    error_line(captured.err, "no mel could be computed: all 2 file(s) failed", "holds nothing to train on")
    assert "0 mel(s) computed" in captured.out and "train with" not in captured.out + captured.err
    _clips(tmp_path / "good", ["good"])
    assert main(["preprocess", "--data", str(tmp_path / "good"), "--out", str(tmp_path / "c2"), "--workers", "0"]) == 0
    assert "train with data.cache_dir=" in capsys.readouterr().out  # the advice when there is something to use


def test_a_vocode_rerun_removes_the_temporary_files_an_interrupted_run_left_for_its_outputs(tmp_path, capsys,
                                                                                            wave_export):
    np.save(tmp_path / "a.npy", np.full((80, 6), 0.5, np.float32))
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".a.wav.x81k2q.tmp"  # what a vocode killed inside atomic_write leaves (mode 0600)
    stale.write_bytes(b"half a wav")
    stale.chmod(0o600)
    other = out / ".notes.txt.abc.tmp"  # not one of this run's outputs: left alone
    other.write_bytes(b"x")
    code, err = wave_cli(capsys, "vocode", tmp_path / "a.npy", "-m", wave_export, "--out", out, "--device", "cpu")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [".notes.txt.abc.tmp", "a.wav"]


def test_ctrl_c_while_a_wav_is_written_finishes_that_file_then_stops_with_130(tmp_path, monkeypatch):
    """A SIGINT that arrives inside soundfile's write (where cffi used to swallow it and the write failed with an
    AssertionError, exit 2) waits until the file is whole; then the run stops as Ctrl-C does (status 130)."""
    import os
    import signal

    import numpy as np
    import soundfile as sf

    from diffcore.cli import run_cli
    from diffwave import audio

    real_write = sf.write

    def write_with_a_signal(f, data, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # delivered now, in this thread, in the middle of the write
        return real_write(f, data, *args, **kwargs)

    monkeypatch.setattr(audio.sf, "write", write_with_a_signal)
    target = tmp_path / "out.wav"

    def main(argv):
        audio.save_audio(target, np.zeros(2205, dtype=np.float32) + 0.1, 22050)
        raise AssertionError("not reached: the deferred Ctrl-C stops the run after the write")

    # Ctrl-C's own handler, as in a terminal: a job started in the background (`cmd &` in a script) inherits SIGINT
    # ignored, and then an ignored Ctrl-C is rightly ignored after the write too
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert run_cli(main, []) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back after the write
    finally:
        signal.signal(signal.SIGINT, previous)
    back, sr = sf.read(target)
    assert sr == 22050 and back.shape == (2205,) and abs(back.mean() - 0.1) < 1e-3
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("package, typo", [("diffwave", "ljspeech-refinr"), ("diffimage", "mnist-cnd")])
def test_a_mistyped_shipped_name_is_refused_with_the_shipped_names(tmp_path, monkeypatch, package, typo):
    """Both packages' ``load`` answer a name that is neither shipped nor a path with the names that are."""
    api = __import__(f"{package}.api", fromlist=["load"])
    monkeypatch.chdir(tmp_path)
    from diffcore.errors import CheckpointError

    with pytest.raises(CheckpointError, match=f"{typo}: no such file or folder") as e:
        api.load(typo, "cpu")
    for name in api.available_models():
        assert name in str(e.value)
