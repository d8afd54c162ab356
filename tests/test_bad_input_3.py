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
import tracemalloc
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
