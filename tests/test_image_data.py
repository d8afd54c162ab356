import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from diffimage.data import (
    SHAPES,
    ImageFolderDataset,
    NpzImageDataset,
    TorchvisionImages,
    cifar10,
    synthetic_images,
    uint8_to_unit,
    unit_to_uint8,
)


def _rgb(seed: int, h: int = 6, w: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_scaling_is_the_papers_linear_map_and_inverts():
    levels = torch.arange(256, dtype=torch.uint8)
    x = uint8_to_unit(levels)
    assert x[0] == -1 and x[-1] == 1
    np.testing.assert_allclose(x.numpy(), np.arange(256) / 127.5 - 1, rtol=0, atol=1e-6)
    assert torch.equal(unit_to_uint8(x), levels)
    assert torch.equal(unit_to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))


def test_image_folder_reads_recursively_exact_pixels(tmp_path):
    arrays = {"a.png": _rgb(0), "sub/b.png": _rgb(1), "sub/deeper/c.bmp": _rgb(2)}
    for name, arr in arrays.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 3 and ds.num_skipped == 0
    for i, name in enumerate(sorted(arrays)):  # sorted by path
        item = ds[i]
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 6, 5)
        assert item["label"].dtype == torch.long and item["label"] == -1
        expected = torch.from_numpy(arrays[name]).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(item["image"], expected, rtol=0, atol=1e-6)


def test_image_folder_grey_resize_and_crop(tmp_path):
    arr = _rgb(3, h=20, w=40)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    grey = ImageFolderDataset(tmp_path, channels=1)[0]["image"]
    expected = np.asarray(Image.fromarray(arr).convert("L"), dtype=np.float64) / 127.5 - 1
    np.testing.assert_allclose(grey[0].numpy(), expected, atol=1e-6)
    assert grey.shape == (1, 20, 40)
    small = ImageFolderDataset(tmp_path, image_size=10)[0]["image"]
    assert small.shape == (3, 10, 10) and small.min() >= -1 and small.max() <= 1
    # shorter side scaled to 10 (40x20 -> 20x10), then the centre 10 columns kept
    ref = np.asarray(Image.fromarray(arr).resize((20, 10), Image.Resampling.BICUBIC))[:, 5:15]
    np.testing.assert_allclose(small.permute(1, 2, 0).numpy(), ref / 127.5 - 1, atol=1e-6)


def test_unreadable_images_are_reported_by_name_and_counted(tmp_path, caplog):
    Image.fromarray(_rgb(4)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="diffimage.data"):
        ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 1 and ds.num_skipped == 2
    assert {p.name for p in ds.skipped} == {"broken.png", "empty.jpg"}
    text = caplog.text
    assert "broken.png" in text and "empty.jpg" in text
    assert sum("skipped 2 unreadable" in r.getMessage() for r in caplog.records) == 1  # the summary once
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no readable images"):
        ImageFolderDataset(only_bad)


def test_image_truncated_after_verification_is_replaced_by_the_next(tmp_path, caplog):
    Image.fromarray(_rgb(5, 64, 64)).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(_rgb(6)).save(tmp_path / "b.png")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[: len(data) // 2])  # the header still verifies
    ds = ImageFolderDataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="diffimage.data"):
        item = ds[0]
    assert len(ds) == 2 and "a.jpg" in caplog.text  # decoding failed: the next image stands in
    torch.testing.assert_close(item["image"], ds[1]["image"])


def test_random_flip_is_a_horizontal_mirror_and_off_by_default(tmp_path):
    images = np.random.default_rng(7).integers(0, 256, (2, 4, 6), dtype=np.uint8)  # grey [N, H, W]
    plain = NpzImageDataset.from_arrays(images)
    base = plain[0]["image"]
    assert base.shape == (1, 4, 6)
    assert all(torch.equal(plain[0]["image"], base) for _ in range(20))
    flipping = NpzImageDataset.from_arrays(images, random_flip=True)
    torch.manual_seed(0)
    seen = [flipping[0]["image"] for _ in range(40)]
    flipped = [torch.equal(s, base.flip(-1)) for s in seen]
    same = [torch.equal(s, base) for s in seen]
    assert all(f or s for f, s in zip(flipped, same)) and 5 < sum(flipped) < 35


def test_npz_dataset_layouts_labels_and_loader(tmp_path):
    rgb = np.random.default_rng(8).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    labels = np.array([0, 3, 1, 3, 2], dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=rgb, labels=labels)
    ds = NpzImageDataset(tmp_path / "d.npz")
    assert len(ds) == 5 and ds.num_classes == 4
    item = ds[1]
    assert item["label"].dtype == torch.long and int(item["label"]) == 3
    torch.testing.assert_close(item["image"], torch.from_numpy(rgb[1]).permute(2, 0, 1).float() / 127.5 - 1)
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 3, 4, 4) and batch["label"].tolist() == labels.tolist()
    np.savez(tmp_path / "nolabels.npz", images=rgb)
    assert NpzImageDataset(tmp_path / "nolabels.npz")[0]["label"] == -1
    assert len(NpzImageDataset(tmp_path / "d.npz", limit=2)) == 2
    with pytest.raises(TypeError, match="uint8"):
        NpzImageDataset.from_arrays(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        NpzImageDataset.from_arrays(np.zeros((2, 4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="labels must have shape"):
        NpzImageDataset.from_arrays(rgb, labels[:3])


def test_shared_mnist_and_cifar(shared_data):
    mnist = NpzImageDataset(shared_data / "mnist" / "train.npz", limit=100)
    item = mnist[0]
    assert item["image"].shape == (1, 28, 28) and 0 <= int(item["label"]) <= 9
    raw = np.load(shared_data / "mnist" / "train.npz")["images"][0]
    assert item["image"].min() == -1 and torch.equal(unit_to_uint8(item["image"])[0], torch.from_numpy(raw))
    cifar = NpzImageDataset(shared_data / "cifar10" / "train10k.npz", random_flip=True)
    assert len(cifar) == 10000 and cifar.num_classes == 10
    assert cifar[123]["image"].shape == (3, 32, 32)


def test_synthetic_images_are_deterministic_structured_and_labelled():
    images, labels = synthetic_images(40, size=24, channels=3, seed=1)
    assert images.shape == (40, 24, 24, 3) and images.dtype == np.uint8
    assert labels.shape == (40,) and labels.dtype == np.int64 and set(labels.tolist()) <= set(range(len(SHAPES)))
    again, labels_again = synthetic_images(40, size=24, channels=3, seed=1)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert not np.array_equal(images, synthetic_images(40, size=24, channels=3, seed=2)[0])
    for img, label in zip(images, labels):
        colours, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
        assert len(colours) == 2  # a background and a shape, nothing else
        fg = colours[np.argmax(colours.sum(1))]
        area = (img == fg).all(-1).mean()
        assert 0.02 < area < 0.5
    assert set(labels.tolist()) == set(range(len(SHAPES)))
    grey, _ = synthetic_images(3, size=16, channels=1)
    assert grey.shape == (3, 16, 16, 1)
    ds = NpzImageDataset.from_arrays(images, labels)
    assert ds[0]["image"].shape == (3, 24, 24) and int(ds[0]["label"]) == labels[0]


def test_synthetic_shape_classes_have_their_geometry():
    images, labels = synthetic_images(200, size=32, seed=3)
    fill = {k: [] for k in range(len(SHAPES))}
    for img, label in zip(images, labels):
        bright = img.sum(-1) > img.reshape(-1, 3).sum(-1).min() + 1
        ys, xs = np.nonzero(bright)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fill[int(label)].append(bright.sum() / box)
    mean = {SHAPES[k]: np.mean(v) for k, v in fill.items()}
    # fraction of the bounding box covered: square ~1, disc ~pi/4, triangle ~1/2, ring below the disc
    assert mean["square"] > 0.95
    assert abs(mean["disc"] - np.pi / 4) < 0.05
    assert abs(mean["triangle"] - 0.5) < 0.08
    assert mean["ring"] < mean["disc"] - 0.15


def test_torchvision_adapter_gives_the_same_dict_format_without_network(tmp_path):
    face = _rgb(9, h=218, w=178)  # CelebA's aligned size
    pairs = [(Image.fromarray(face), 7), (Image.fromarray(face[..., 0]), 2)]  # an RGB and a grey PIL image
    ds = TorchvisionImages(pairs, channels=3, random_flip=False, image_size=64, crop=140)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and int(item["label"]) == 7
    ref = Image.fromarray(face).crop((19, 39, 159, 179)).resize((64, 64), Image.Resampling.BICUBIC)
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), np.asarray(ref) / 127.5 - 1, atol=1e-6)
    assert ds[1]["image"].shape == (3, 64, 64)  # grey promoted to RGB
    unlabeled = TorchvisionImages([(Image.fromarray(face), None)], channels=1, random_flip=False, label=False)
    assert unlabeled[0]["image"].shape == (1, 218, 178) and unlabeled[0]["label"] == -1
    # download=False on an empty folder is passed through to torchvision, which refuses without touching the net
    with pytest.raises(RuntimeError):
        cifar10(tmp_path, download=False)
