"""Spoken-digit classifier and the DiffWave Table 2 metrics (diffwave.digits)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from diffcore.config import ConfigError
from diffwave import digits as D
from diffwave.audio import load_audio
from diffwave.data import fsdd_files

# ---------------------------------------------------------------------------------------------------------------
# Metrics on hand-computable cases


def test_inception_score_closed_forms():
    C = 10
    one_hot = np.eye(C)[np.arange(50) % C]  # confident and balanced
    assert D.inception_score(one_hot) == pytest.approx(C)
    assert D.inception_score(np.full((7, C), 1 / C)) == pytest.approx(1.0)
    assert D.inception_score(np.eye(C)[np.zeros(20, int)]) == pytest.approx(1.0)  # confident, one class
    # against scipy's KL on random predictions
    p = np.random.default_rng(0).dirichlet(np.ones(C) * 0.3, size=40)
    expected = math.exp(np.mean([entropy(pi, p.mean(0)) for pi in p]))
    assert D.inception_score(p) == pytest.approx(expected, rel=1e-10)


def test_modified_inception_score_closed_forms():
    p = np.array([[0.9, 0.1], [0.1, 0.9]])
    # both ordered pairs have KL = 0.9 ln 9 + 0.1 ln(1/9) = 0.8 ln 9
    assert D.modified_inception_score(p) == pytest.approx(9**0.8)
    assert D.modified_inception_score(np.tile([0.2, 0.3, 0.5], (5, 1))) == pytest.approx(1.0)
    q = np.random.default_rng(1).dirichlet(np.ones(4), size=6)
    pairs = [entropy(q[i], q[j]) for i in range(6) for j in range(6) if i != j]
    assert D.modified_inception_score(q) == pytest.approx(math.exp(np.mean(pairs)), rel=1e-10)
    with pytest.raises(ValueError, match="two samples"):
        D.modified_inception_score(q[:1])


def test_am_score_closed_forms():
    C = 10
    uniform_ref = np.full((30, C), 1 / C)
    balanced = np.eye(C)[np.arange(40) % C]
    assert D.am_score(balanced, balanced) == pytest.approx(0.0, abs=1e-9)  # matching classes, confident
    assert D.am_score(np.full((8, C), 1 / C), balanced) == pytest.approx(math.log(C))  # entropy term only
    # confident but all one class, against balanced reference classes: KL(uniform || one-hot) is huge
    assert D.am_score(np.eye(C)[np.zeros(10, int)], uniform_ref) > 20
    p = np.random.default_rng(2).dirichlet(np.ones(C), size=25)
    r = np.random.default_rng(3).dirichlet(np.ones(C), size=25)
    expected = entropy(r.mean(0), p.mean(0)) + np.mean([entropy(pi) for pi in p])
    assert D.am_score(p, r) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_closed_forms():
    a = np.random.default_rng(4).normal(size=(500, 6)) @ np.random.default_rng(5).normal(size=(6, 6)) + 3.0
    assert abs(D.frechet_distance(a, a)) < 1e-8
    shift = np.arange(6.0)
    assert D.frechet_distance(a, a + shift) == pytest.approx((shift**2).sum(), rel=1e-8)
    # b = 2a: |mu - 2mu|^2 + Tr(S + 4S - 2 * 2S) = |mu|^2 + Tr(S)
    expected = (a.mean(0) ** 2).sum() + np.trace(np.cov(a, rowvar=False))
    assert D.frechet_distance(a, 2 * a) == pytest.approx(expected, rel=1e-8)
    # singular covariances (dead ReLU units) still give a finite, exact answer
    z = np.concatenate([a, np.zeros((500, 3))], axis=1)
    assert D.frechet_distance(z, z + np.r_[shift, 0, 0, 0]) == pytest.approx((shift**2).sum(), rel=1e-6)


def _blobs(counts, seed=0, d=3):
    rng = np.random.default_rng(seed)
    centres = np.eye(len(counts), d) * 20.0
    x = np.concatenate([centres[i] + rng.normal(size=(n, d)) for i, n in enumerate(counts)])
    return x, np.repeat(np.arange(len(counts)), counts)


def test_kmeans_recovers_separated_clusters():
    x, truth = _blobs([30, 50, 20])
    centroids, labels = D.kmeans(x, 3, seed=1)
    # same partition up to renaming: each true cluster maps to one label and vice versa
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 3 and len({p[1] for p in pairs}) == 3
    for t, lab in pairs:
        np.testing.assert_allclose(centroids[lab], x[truth == t].mean(0))


def test_ndb_closed_forms():
    ref, _ = _blobs([100, 100, 100, 100], seed=0)
    same = D.ndb_score(ref, ref, bins=4)
    assert same == {"ndb": 0.0, "ndb_k": 0.0, "bins": 4.0}
    fresh, _ = _blobs([100, 100, 100, 100], seed=9)  # another sample of the same distribution
    assert D.ndb_score(ref, fresh, bins=4)["ndb"] == 0.0
    collapsed, _ = _blobs([200, 0, 0, 0], seed=3)  # mode collapse onto one cluster: every bin differs
    assert D.ndb_score(ref, collapsed, bins=4) == {"ndb": 4.0, "ndb_k": 1.0, "bins": 4.0}


# ---------------------------------------------------------------------------------------------------------------
# Config, windowing, file split


def test_config_round_trip_and_checks():
    cfg = D.DigitClassifierConfig.from_dict({"channels": [8, 16], "features": {"n_mels": 32}})
    assert D.DigitClassifierConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.features.num_frames == 1 + 8000 // 128
    with pytest.raises(ConfigError, match="kernel_size"):
        D.DigitClassifierConfig(kernel_size=4)
    with pytest.raises(ConfigError, match="frames"):
        D.DigitClassifierConfig(channels=(8,) * 7)
    with pytest.raises(ConfigError, match="f_max"):
        D.DigitFeatureConfig(f_max=5000.0)


def test_fit_to_window_centres_pads_and_crops():
    x = torch.arange(1.0, 5.0)
    torch.testing.assert_close(D.fit_to_window(x, 8), torch.tensor([0, 0, 1, 2, 3, 4, 0, 0.0]))
    torch.testing.assert_close(D.fit_to_window(x, 8, offset=4), torch.tensor([0, 0, 0, 0, 1, 2, 3, 4.0]))
    torch.testing.assert_close(D.fit_to_window(torch.arange(10.0), 4), torch.tensor([3, 4, 5, 6.0]))
    torch.testing.assert_close(D.fit_to_window(torch.arange(10.0), 4, offset=-6), torch.tensor([6, 7, 8, 9.0]))


def test_split_fsdd_files_by_index():
    files = [f"{d}_theo_{i}.wav" for d in range(2) for i in range(5, 50)]
    train, val = D.split_fsdd_files(files)
    assert len(val) == 10 and len(train) == 80
    assert all(5 <= int(p.stem.split("_")[2]) <= 9 for p in val)
    assert not {p.name for p in train} & {p.name for p in val}


# ---------------------------------------------------------------------------------------------------------------
# A real classifier on FSDD (trained once for the module, on 300 clips, about 20 s on one CPU thread)


def _index(p: Path) -> int:
    return int(p.stem.split("_")[2])


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    root = shared_data / "fsdd"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    train, val = D.split_fsdd_files(fsdd_files(root, "train"))
    train = [p for p in train if _index(p) < 15]  # 5 clips per speaker and digit: 300
    val = [p for p in val if _index(p) < 7]  # 2 per speaker and digit: 120
    ckpt = tmp_path_factory.mktemp("digits") / "classifier.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these small convolutions run fastest on one thread (and the CI machine is shared)
    try:
        model, history = D.train_digit_classifier(train, ckpt, epochs=30, val_files=val, seed=0)
    finally:
        torch.set_num_threads(threads)
    load = lambda files: [load_audio(p)[0] for p in files]  # noqa: E731
    return {"model": model, "history": history, "ckpt": ckpt, "train": load(train), "val": load(val)}


def test_classifier_learns_digits(trained):
    h = trained["history"]
    assert h["train_clips"] == 300 and h["val_clips"] == 120
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    assert h["val_accuracy"][-1] >= 0.8  # chance is 0.1; measured 0.93 with seed 0


def test_checkpoint_round_trip(trained):
    state = torch.load(trained["ckpt"], weights_only=True)
    assert state["kind"] == "digit_classifier" and state["val_accuracy"] == trained["history"]["val_accuracy"][-1]
    loaded = D.load_digit_classifier(trained["ckpt"])
    x = torch.stack([D.fit_to_window(w, 8000) for w in trained["val"][:8]])
    with torch.no_grad():
        logits, feats = loaded.logits_and_features(x)
        ref_logits, ref_feats = trained["model"].logits_and_features(x)
    torch.testing.assert_close(logits, ref_logits)
    assert feats.shape == (8, 128)
    torch.testing.assert_close(feats, ref_feats)


def test_real_clips_score_well_and_noise_badly(trained):
    model, train, val = trained["model"], trained["train"], trained["val"]
    g = torch.Generator().manual_seed(0)
    noise = [0.1 * torch.randn(8000, generator=g) for _ in range(len(val))]
    real = D.digit_metrics(val, train, model)
    bad = D.digit_metrics(noise, train, model)
    assert real["n_generated"] == 120 and real["n_reference"] == 300
    assert real["fid"] * 50 < bad["fid"]
    assert real["is"] > 5.0 and bad["is"] < 2.0  # 10 balanced classes: at most 10
    assert real["mis"] > 10 * bad["mis"]
    assert real["am"] < 1.0 < bad["am"]
    assert real["ndb"] <= 2 and bad["ndb"] >= 8
    self_ = D.digit_metrics(train, train, model)
    assert abs(self_["fid"]) < 1e-6 and self_["ndb"] == 0.0 and self_["is"] == pytest.approx(self_["reference_is"])


def test_other_sample_rates_are_resampled(trained):
    import torchaudio.functional as AF

    model, val = trained["model"], trained["val"][:40]
    p8, _ = D.classifier_outputs(model, val)
    p16, _ = D.classifier_outputs(model, [AF.resample(w, 8000, 16000) for w in val], sr=16000)
    assert (p8.argmax(1) == p16.argmax(1)).mean() >= 0.9
