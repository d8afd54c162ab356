"""diffcore.split: the held-out sets of every package come from one function with named, versioned schemes.

The two legacy schemes must reproduce, index for index, the formulas that split every run folder and shipped model
before the scheme field existed; the unified scheme must have the properties a held-out set needs; a data config
without the field (old run folders, the shipped models) must keep its package's legacy scheme."""

import json
from pathlib import Path

import numpy as np
import pytest

from diffcore.config import ConfigError
from diffcore.split import HOLDOUT_SCHEMES, UNIFIED_SCHEME, holdout_indices

REPO = Path(__file__).resolve().parents[1]


# The formulas as they stood in diffwave/recipe.py and diffimage/recipe.py before issue 12, verbatim.
def old_diffwave(n: int, k: int) -> list[int]:
    if k <= 0:
        return []
    picks = np.round(np.linspace(0, n - 1, k + 2)[1:-1]).astype(int)
    out = sorted(set(int(i) for i in picks))
    i = 0
    while len(out) < k:
        if i not in out:
            out.append(i)
        i += 1
    return sorted(out)


def old_diffimage(n: int, k: int) -> list[int]:
    if k <= 0:
        return []
    return [int((i + 0.5) * n / k) for i in range(k)]


def cases():
    small = [(n, k) for n in range(1, 80) for k in range(0, n)]
    rng = np.random.default_rng(0)
    large = [(int(n), int(k)) for n, k in zip(rng.integers(100, 2_000_000, 300), rng.integers(1, 5000, 300)) if k < n]
    shipped = [(24, 3), (50_000, 64), (60_000, 1000), (13_100, 8), (10, 2), (10, 3)]
    return small + large + shipped


@pytest.mark.parametrize("scheme, old", [("diffwave-v1", old_diffwave), ("diffimage-v1", old_diffimage)])
def test_the_legacy_schemes_are_the_old_formulas_index_for_index(scheme, old):
    for n, k in cases():
        assert holdout_indices(n, k, scheme) == old(n, k), (scheme, n, k)


@pytest.mark.parametrize("scheme", HOLDOUT_SCHEMES)
def test_every_scheme_gives_k_distinct_sorted_indices_in_range_spread_over_the_set(scheme):
    for n, k in cases():
        got = holdout_indices(n, k, scheme)
        assert len(got) == len(set(got)) == max(k, 0)
        assert got == sorted(got) and all(isinstance(i, int) and 0 <= i < n for i in got)
        assert holdout_indices(n, k, scheme) == got  # depends on (n, k) alone
        if k >= 2 and n >= 4 * k:  # spread: every 1/k-th of the set holds about one of them
            gaps = np.diff([-1, *got, n])
            assert gaps.max() <= 2 * n / k + 2, (scheme, n, k, got)


def test_the_unified_scheme_takes_the_middle_of_each_of_k_equal_strata():
    assert UNIFIED_SCHEME == "strata-v1"
    for n, k in cases():
        got = holdout_indices(n, k)
        for i, j in enumerate(got):
            assert 2 * k * j <= (2 * i + 1) * n < 2 * k * (j + 1)  # j = floor of stratum i's middle, (i + 1/2) n/k
            if n >= 2 * k:  # strata at least 2 wide: j lies inside stratum i = [i n/k, (i+1) n/k)
                assert i * n <= j * k < (i + 1) * n
    # exact integer arithmetic: no float rounding at any size
    n, k = 10**18 + 7, 3
    assert holdout_indices(n, k) == [(2 * i + 1) * n // (2 * k) for i in range(k)]
    assert holdout_indices(10, 3) == [1, 5, 8] and holdout_indices(24, 3) == [4, 12, 20]


def test_bad_requests_name_the_field():
    with pytest.raises(ConfigError, match="no training clip"):
        holdout_indices(3, 3, "diffwave-v1", item="clip")
    with pytest.raises(ConfigError, match=r"unknown data.holdout_scheme 'v2'.*strata-v1"):
        holdout_indices(10, 2, "v2")
    assert holdout_indices(5, 0) == [] and holdout_indices(5, -1, "diffimage-v1") == []


def test_configs_without_the_field_keep_their_packages_legacy_scheme_and_recipes_name_theirs():
    from diffimage.recipe import ImageDataConfig
    from diffwave.recipe import DataConfig

    assert DataConfig.from_dict({"holdout": 3}).holdout_scheme == "diffwave-v1"
    assert ImageDataConfig.from_dict({"holdout": 64}).holdout_scheme == "diffimage-v1"
    for cls in (DataConfig, ImageDataConfig):
        cfg = cls.from_dict({"holdout": 2, "holdout_scheme": "strata-v1"})
        assert cls.from_dict(cfg.to_dict()) == cfg  # the field round-trips, so new run folders name their scheme
        with pytest.raises(ConfigError, match="holdout_scheme"):
            cls.from_dict({"holdout_scheme": "newest"})
    for name, cls, legacy in (("ljspeech-tiny", DataConfig, "diffwave-v1"), ("mnist-small", ImageDataConfig,
                                                                               "diffimage-v1")):
        pkg = "diffwave" if cls is DataConfig else "diffimage"
        data = json.loads((REPO / pkg / "pretrained" / name / "config.json").read_text())["data"]
        assert "holdout_scheme" not in data and cls.from_dict(data).holdout_scheme == legacy


def test_the_shipped_vocoder_still_holds_out_the_clips_its_model_card_names(shared_data):
    from diffwave.evaluate import heldout_files

    info = json.loads((REPO / "diffwave" / "pretrained" / "ljspeech-tiny" / "config.json").read_text())
    info["data"]["path"] = str(shared_data / "ljspeech" / "wavs")
    names = [p.stem for p in heldout_files(info)]
    assert names == ["LJ001-0007", "LJ001-0013", "LJ001-0018"]  # MODEL_CARD.md: "3 held out: ..."
    card = (REPO / "diffwave" / "pretrained" / "ljspeech-tiny" / "MODEL_CARD.md").read_text()
    assert "LJ001-0007, LJ001-0013, LJ001-0018" in card


def test_the_shipped_image_models_held_out_digits_are_the_old_ones(shared_data):
    """mnist-small: 64 held out of its first 50,000 training digits, by the diffimage-v1 formula."""
    from diffimage.recipe import ImageDataConfig, holdout_indices as image_holdout

    data = json.loads((REPO / "diffimage" / "pretrained" / "mnist-small" / "config.json").read_text())["data"]
    cfg = ImageDataConfig.from_dict(data)
    assert image_holdout(cfg.limit, cfg.holdout, cfg.holdout_scheme) == old_diffimage(50_000, 64)
