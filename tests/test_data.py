"""Tests for ac_jax.data: original-format readers, TFDS conversion, synthetic data, device ops."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import sys
import tarfile
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from ac_jax import data
from ac_jax.data import datasets as datasets_mod
from ac_jax.data import formats

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------
# Writers for small files in the original formats
# --------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool = True) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_fashion_mnist(folder: Path, n_train=6, n_test=3, gz=True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": RNG.integers(0, 256, (n_train, 28, 28)),
        "train_y": np.arange(n_train) % 10,
        "test_x": RNG.integers(0, 256, (n_test, 28, 28)),
        "test_y": (np.arange(n_test) + 3) % 10,
    }
    for key, base in formats.FASHION_MNIST_FILES.items():
        magic = 2051 if key.endswith("x") else 2049
        write_idx(folder / (base + ".gz" if gz else base), arrays[key], magic, gz)
    return arrays


def hwc_to_cifar_rows(images_hwc: np.ndarray) -> np.ndarray:
    """[N, 32, 32, 3] -> [N, 3072] rows: all red, then all green, then all blue (row-major)."""
    return images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), -1).astype(np.uint8)


def cifar_batch(images_hwc: np.ndarray, labels, label_key: bytes) -> bytes:
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        label_key: [int(v) for v in labels],
        b"data": hwc_to_cifar_rows(images_hwc),
        b"filenames": [b"img_%d.png" % i for i in range(len(labels))],
    }
    # The originals (Python 2, old numpy) name numpy.core.multiarray; so do ours.
    raw = pickle.dumps(batch, protocol=2)
    return raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_cifar10(folder: Path, per_batch=4) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    all_x, all_y = [], []
    for name in formats.CIFAR10_TRAIN + formats.CIFAR10_TEST:
        x = RNG.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        y = RNG.integers(0, 10, per_batch)
        (folder / name).write_bytes(cifar_batch(x, y, b"labels"))
        all_x.append(x)
        all_y.append(y)
    return np.concatenate(all_x), np.concatenate(all_y)


def write_svhn(folder: Path, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.float64).reshape(n, 1)  # 1..10, 10 = digit 0
    scipy.io.savemat(folder / name, {"X": x, "y": y})
    return x, y


@pytest.fixture
def no_tfds(monkeypatch):
    """Hide tensorflow_datasets, so ``auto`` only searches for files."""
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (idx)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz, no_tfds):
    arrays = write_fashion_mnist(tmp_path, gz=gz)
    ds = data.load("fashion-mnist", data_dir=tmp_path)
    assert ds.name == "fashion_mnist" and ds.num_classes == 10 and not ds.augment
    assert ds.train_x.shape == (6, 28, 28, 1) and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (3, 28, 28, 1) and ds.test_y.dtype == np.int32
    assert ds.input_shape == (28, 28, 1)
    np.testing.assert_array_equal(ds.train_x[..., 0], arrays["train_x"])
    np.testing.assert_array_equal(ds.test_y, arrays["test_y"])


def test_fashion_mnist_in_subfolder(tmp_path, no_tfds):
    write_fashion_mnist(tmp_path / "fashion-mnist")
    assert len(data.load("fmnist", data_dir=tmp_path).train_x) == 6


def test_real_fashion_mnist():
    folder = datasets_mod.FASHION_MNIST_SYSTEM_DIR
    if not folder.is_dir():
        pytest.skip(f"{folder} missing (install it with `apt-get install dataset-fashion-mnist`)")
    ds = data.load("fashion_mnist", source="files")
    assert ds.train_x.shape == (60000, 28, 28, 1) and ds.test_x.shape == (10000, 28, 28, 1)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(ds.train_y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_y), [1000] * 10)


def test_truncated_idx_names_file(tmp_path, no_tfds):
    write_fashion_mnist(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(raw[:-100]))  # valid gzip, payload short
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*truncated"):
        data.load("fashion_mnist", data_dir=tmp_path)


def test_truncated_gzip_stream_names_file(tmp_path, no_tfds):
    write_fashion_mnist(tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-10])  # the gzip stream itself is cut
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        data.load("fashion_mnist", data_dir=tmp_path)


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "x.idx"
    write_idx(path, np.zeros((2, 3, 3)), 2049, gz=False)
    with pytest.raises(ValueError, match="x.idx.*magic number is 2049, expected 2051"):
        formats.read_idx(path, formats.IDX_IMAGES_MAGIC)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (pickles)
# --------------------------------------------------------------------------------------------


def test_cifar10_pickles(tmp_path, no_tfds):
    x, y = write_cifar10(tmp_path / "cifar-10-batches-py")
    ds = data.load("cifar-10", data_dir=tmp_path)
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.augment
    assert ds.train_x.shape == (20, 32, 32, 3) and ds.test_x.shape == (4, 32, 32, 3)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int32
    np.testing.assert_array_equal(ds.train_x, x[:20])
    np.testing.assert_array_equal(ds.test_x, x[20:])
    np.testing.assert_array_equal(np.concatenate([ds.train_y, ds.test_y]), y)
    # data_dir may also be the batches folder itself
    assert len(data.load("cifar10", data_dir=tmp_path / "cifar-10-batches-py").test_y) == 4


def test_cifar_chw_to_hwc_layout(tmp_path, no_tfds):
    # One row: 1024 bytes of red = 10, green = 20, blue = 30, except red pixel (row 1, col 2).
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)])
    row[1 * 32 + 2] = 99
    batch = {b"data": row[None].astype(np.uint8), b"fine_labels": [7], b"coarse_labels": [1]}
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    ds = data.load("CIFAR-100", data_dir=tmp_path)
    assert ds.num_classes == 100 and ds.augment
    img = ds.train_x[0]
    assert img.shape == (32, 32, 3)
    assert img[0, 0].tolist() == [10, 20, 30]
    assert img[1, 2].tolist() == [99, 20, 30]
    assert ds.train_y.tolist() == [7]  # fine labels, not coarse


def test_cifar10_from_archive(tmp_path, no_tfds):
    x, _ = write_cifar10(tmp_path / "src" / "cifar-10-batches-py", per_batch=2)
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = data.load("cifar10", data_dir=archive.parent)
    np.testing.assert_array_equal(ds.test_x, x[10:])


def test_cifar_rejects_code_in_pickle(tmp_path, no_tfds):
    write_cifar10(tmp_path, per_batch=1)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd}))
    with pytest.raises(ValueError, match="test_batch.*refusing to load"):
        data.load("cifar10", data_dir=tmp_path)


def test_cifar_truncated_pickle(tmp_path, no_tfds):
    write_cifar10(tmp_path, per_batch=2)
    path = tmp_path / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="data_batch_3.*truncated"):
        data.load("cifar10", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# SVHN (.mat)
# --------------------------------------------------------------------------------------------


def test_svhn_mat(tmp_path, no_tfds):
    x, y = write_svhn(tmp_path, 12, "train_32x32.mat")
    write_svhn(tmp_path, 5, "test_32x32.mat")
    ds = data.load("SVHN", data_dir=tmp_path)
    assert ds.name == "svhn" and not ds.augment and ds.num_classes == 10
    assert ds.train_x.shape == (12, 32, 32, 3) and ds.test_x.shape == (5, 32, 32, 3)
    assert ds.train_y.dtype == np.int32
    np.testing.assert_array_equal(ds.train_y, [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2])  # 10 -> 0
    np.testing.assert_array_equal(ds.train_x[4, :, :, 2], x[:, :, 2, 4])  # image 4, blue


def test_svhn_corrupt_mat(tmp_path, no_tfds):
    write_svhn(tmp_path, 3, "train_32x32.mat")
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(ValueError, match="test_32x32.mat"):
        data.load("svhn", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# Missing datasets
# --------------------------------------------------------------------------------------------


def test_missing_cifar10_message(tmp_path, no_tfds):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("cifar10", data_dir=tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "CIFAR-10 not found" in msg
    assert f"{tmp_path}/cifar-10-batches-py/{{data_batch_1" in msg and "test_batch" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "--data-dir" in msg and "tfds build cifar10" in msg
    assert "tensorflow_datasets is not installed" in msg


def test_missing_fashion_mnist_message(tmp_path, monkeypatch, no_tfds):
    spec = dataclasses.replace(datasets_mod.SPECS["fashion_mnist"],
                               system_dirs=(tmp_path / "system",))
    monkeypatch.setitem(datasets_mod.SPECS, "fashion_mnist", spec)
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("fashion_mnist", data_dir=tmp_path / "mine")
    msg = str(info.value)
    assert f"{tmp_path}/system/{{train-images-idx3-ubyte[.gz]" in msg
    assert f"{tmp_path}/mine/fashion-mnist/" in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "https://github.com/zalandoresearch/fashion-mnist" in msg


@pytest.mark.parametrize("name, phrases", [
    ("svhn", ["train_32x32.mat", "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
              "tfds build svhn_cropped"]),
    ("cifar100", ["cifar-100-python/", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"]),
])
def test_missing_other_messages(tmp_path, no_tfds, name, phrases):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load(name, data_dir=tmp_path, source="files")
    for phrase in phrases:
        assert phrase in str(info.value)


def test_missing_without_data_dir_says_how_to_give_one(monkeypatch, no_tfds):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(data.DatasetNotFoundError, match=r"pass --data-dir.*AC_JAX_DATA_DIR"):
        data.load("svhn")


def test_data_dir_from_environment(tmp_path, monkeypatch, no_tfds):
    write_svhn(tmp_path, 2, "train_32x32.mat")
    write_svhn(tmp_path, 2, "test_32x32.mat")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert len(data.load("svhn").train_x) == 2


def test_unknown_name_and_source():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        data.load("mnist")
    with pytest.raises(ValueError, match="source"):
        data.load("synthetic", source="web")
    assert [data.canonical_name(n) for n in ("Fashion-MNIST", "cifar-10", "CIFAR_100")] == [
        "fashion_mnist", "cifar10", "cifar100"]


# --------------------------------------------------------------------------------------------
# TFDS conversion, with a fake tensorflow_datasets module
# --------------------------------------------------------------------------------------------


class FakeSource(list):
    def __getitems__(self, indices):
        return [self[i] for i in indices]


def fake_tfds(prepared=True, file_format="array_record", image_shape=(28, 28, 1), classes=10):
    """A stand-in for tensorflow_datasets serving 5 train and 3 test examples."""
    rng = np.random.default_rng(1)
    splits = {
        split: [{"image": rng.integers(0, 256, image_shape, dtype=np.uint8),
                 "label": np.int64(i % classes)} for i in range(n)]
        for split, n in (("train", 5), ("test", 3))
    }
    module = types.ModuleType("tensorflow_datasets")
    module.calls = []

    class Builder:
        def __init__(self, name, data_dir):
            self.name, self.data_dir = name, data_dir
            self.info = types.SimpleNamespace(
                file_format=types.SimpleNamespace(value=file_format),
                features={"label": types.SimpleNamespace(num_classes=classes)},
            )

        def is_prepared(self):
            return prepared

        def as_data_source(self, split):
            module.calls.append(("as_data_source", self.name, split))
            return FakeSource(splits[split])

    def builder(name, data_dir=None):
        module.calls.append(("builder", name, data_dir))
        return Builder(name, data_dir)

    def load(name, split, data_dir, batch_size, as_supervised, download):
        assert batch_size == -1 and as_supervised and not download
        module.calls.append(("load", name, split))
        examples = splits[split]
        return np.stack([e["image"] for e in examples]), np.array([e["label"] for e in examples])

    module.builder, module.load, module.as_numpy = builder, load, lambda tree: tree
    module.splits = splits
    return module


def install_fake_tfds(monkeypatch, data_dir: Path, tfds_name: str, **kwargs):
    """Put the fake module in sys.modules, and the dataset's folder (looked for first) in place."""
    fake = fake_tfds(**kwargs)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    (data_dir / tfds_name).mkdir(parents=True)
    return fake


def test_tfds_data_source(tmp_path, monkeypatch):
    fake = install_fake_tfds(monkeypatch, tmp_path / "tfds", "fashion_mnist")
    ds = data.load("fashion_mnist", data_dir=tmp_path / "tfds", source="tfds")
    assert ("builder", "fashion_mnist", str(tmp_path / "tfds")) in fake.calls
    assert ("as_data_source", "fashion_mnist", "train") in fake.calls
    assert ds.train_x.shape == (5, 28, 28, 1) and ds.train_x.dtype == np.uint8
    assert ds.test_y.dtype == np.int32 and ds.test_y.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(ds.train_x[3], fake.splits["train"][3]["image"])


def test_tfds_auto_fallback_svhn_name(tmp_path, monkeypatch):
    fake = install_fake_tfds(monkeypatch, tmp_path, "svhn_cropped", image_shape=(32, 32, 3))
    ds = data.load("svhn", data_dir=tmp_path)  # no .mat files there -> TFDS
    assert ds.name == "svhn" and ds.train_x.shape == (5, 32, 32, 3)
    assert fake.calls[0][1] == "svhn_cropped"


def test_tfds_grayscale_without_channel_axis(tmp_path, monkeypatch):
    install_fake_tfds(monkeypatch, tmp_path, "fashion_mnist", image_shape=(28, 28))
    assert data.load("fmnist", data_dir=tmp_path, source="tfds").input_shape == (28, 28, 1)


def test_tfds_tfrecord_needs_tensorflow(tmp_path, monkeypatch):
    install_fake_tfds(monkeypatch, tmp_path, "fashion_mnist", file_format="tfrecord")
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(data.TFDSUnavailableError, match="TensorFlow is not installed"):
        data.load("fashion_mnist", data_dir=tmp_path, source="tfds")


def test_tfds_tfrecord_with_tensorflow(tmp_path, monkeypatch):
    fake = install_fake_tfds(monkeypatch, tmp_path, "cifar100", file_format="tfrecord",
                             image_shape=(32, 32, 3), classes=100)
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    ds = data.load("cifar100", data_dir=tmp_path, source="tfds")
    assert ("load", "cifar100", "test") in fake.calls
    assert ds.num_classes == 100 and ds.augment and ds.test_x.shape == (3, 32, 32, 3)


def test_tfds_not_prepared(tmp_path, monkeypatch):
    install_fake_tfds(monkeypatch, tmp_path, "cifar10", prepared=False)
    with pytest.raises(data.DatasetNotFoundError, match="prepared TFDS 'cifar10'"):
        data.load("cifar10", data_dir=tmp_path, source="tfds")


def test_tfds_skipped_without_dataset_folder(tmp_path, monkeypatch):
    fake = fake_tfds()
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    with pytest.raises(data.DatasetNotFoundError):
        data.load("cifar10", data_dir=tmp_path, source="tfds")
    assert fake.calls == []  # decided without asking TFDS


# --------------------------------------------------------------------------------------------
# Synthetic data and subsets
# --------------------------------------------------------------------------------------------


def test_synthetic_deterministic_and_balanced():
    a, b = data.synthetic(), data.load("synthetic")
    for field in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.train_x.shape == (512, 12, 12, 1) and a.test_x.shape == (256, 12, 12, 1)
    assert a.train_x.dtype == np.uint8 and a.num_classes == 4
    np.testing.assert_array_equal(np.bincount(a.train_y), [128] * 4)
    c = data.synthetic(num_train=30, num_test=10, input_shape=(8, 8, 3), num_classes=3, seed=1)
    assert c.train_x.shape == (30, 8, 8, 3) and set(c.test_y.tolist()) == {0, 1, 2}
    assert not np.array_equal(data.synthetic(seed=1).train_x, a.train_x)


def test_synthetic_is_learnable_by_class_means():
    # Nearest class mean on raw pixels: far above chance (25%) -> the labels carry signal.
    ds = data.synthetic()
    x, xt = ds.train_x.reshape(512, -1) / 255.0, ds.test_x.reshape(256, -1) / 255.0
    means = np.stack([x[ds.train_y == c].mean(0) for c in range(4)])
    pred = np.argmin(((xt[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == ds.test_y).mean() > 0.8


def test_subset_deterministic_stratified():
    ds = data.synthetic(num_train=400, num_test=100)
    a, b = ds.subset(100, 20, seed=3), ds.subset(100, 20, seed=3)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    np.testing.assert_array_equal(np.bincount(a.train_y), [25] * 4)
    np.testing.assert_array_equal(np.bincount(a.test_y), [5] * 4)
    assert not np.array_equal(ds.subset(100, None, seed=4).train_x, a.train_x)
    assert len(ds.subset(None, 7).train_y) == 400
    larger = ds.subset(200, None, seed=3)  # the same shuffle, cut later
    assert set(map(bytes, a.train_x)) <= set(map(bytes, larger.train_x))
    small = data.load("synthetic", train_subset=40, test_subset=8, seed=3)
    assert (len(small.train_x), len(small.test_x)) == (40, 8)
    with pytest.raises(ValueError, match="subset"):
        ds.subset(401, None)


def test_dataset_validates_arrays():
    x, y = np.zeros((2, 4, 4, 1), np.uint8), np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="train_x"):
        data.Dataset("d", x.astype(np.float32), y, x, y, num_classes=2)
    with pytest.raises(ValueError, match="test_y"):
        data.Dataset("d", x, y, x, y[:1], num_classes=2)
    with pytest.raises(ValueError, match="labels outside 0..1"):
        data.Dataset("d", x, y + 2, x, y, num_classes=2)
    assert "train=2" in repr(data.Dataset("d", x, y, x, y, num_classes=2))


# --------------------------------------------------------------------------------------------
# Device preprocessing
# --------------------------------------------------------------------------------------------


def test_normalize():
    out = data.normalize(jnp.array([0, 128, 255], jnp.uint8))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, [-0.5, 128 / 255 - 0.5, 0.5], atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.float32])
def test_crop_flip_shape_dtype(dtype):
    images = jnp.asarray(RNG.integers(0, 256, (5, 10, 12, 3)), dtype)
    out = data.random_crop_flip(jax.random.key(0), images)
    assert out.shape == images.shape and out.dtype == dtype


def test_crop_flip_pad0_is_identity_or_flip():
    images = jnp.asarray(RNG.integers(0, 256, (32, 6, 6, 2)), jnp.uint8)
    out = np.asarray(data.random_crop_flip(jax.random.key(1), images, pad=0))
    same = [(o == i).all() for o, i in zip(out, np.asarray(images))]
    flipped = [(o == i[:, ::-1]).all() for o, i in zip(out, np.asarray(images))]
    assert all(s or f for s, f in zip(same, flipped))
    assert any(same) and any(flipped)  # p = 0.5 each; 32 images


def test_crop_is_shifted_window_of_padded_image():
    pad, h, w = 4, 8, 8
    images = RNG.uniform(1, 2, (40, h, w, 1)).astype(np.float32)  # nonzero: padding is visible
    out = np.asarray(data.random_crop_flip(jax.random.key(2), jnp.asarray(images), pad=pad))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    # windows[i, dy, dx] = padded[i, dy:dy + h, dx:dx + w], as [B, 9, 9, h, w, 1]
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
    windows = windows.transpose(0, 1, 2, 4, 5, 3)
    out = out[:, None, None]
    match = np.stack([(windows == out).all(axis=(3, 4, 5)),
                      (windows[..., :, ::-1, :] == out).all(axis=(3, 4, 5))], axis=-1)
    assert match.reshape(len(images), -1).any(axis=1).all(), "a crop is not a padded window"
    kinds = {tuple(np.argwhere(m)[0]) for m in match}  # (dy, dx, flipped) of each image
    assert len(kinds) > 10  # offsets and flips vary across the batch


def test_crop_flip_different_keys_differ():
    images = jnp.asarray(RNG.integers(0, 256, (8, 16, 16, 3)), jnp.uint8)
    a = data.random_crop_flip(jax.random.key(0), images)
    b = data.random_crop_flip(jax.random.key(1), images)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, data.random_crop_flip(jax.random.key(0), images))


def test_preprocess_under_jit_and_vmap():
    images = jnp.asarray(RNG.integers(0, 256, (3, 4, 8, 8, 3)), jnp.uint8)
    keys = jax.random.split(jax.random.key(5), 3)
    batched = jax.jit(jax.vmap(lambda k, x: data.preprocess(k, x, True)))(keys, images)
    looped = jnp.stack([data.preprocess(k, x, augment=True) for k, x in zip(keys, images)])
    # vmap over keys and batches must equal one call per batch
    np.testing.assert_allclose(batched, looped)
    assert batched.dtype == jnp.float32 and batched.shape == images.shape
    assert float(batched.min()) >= -0.5 - 1e-6 and float(batched.max()) <= 0.5 + 1e-6
    plain = jax.jit(data.preprocess, static_argnames="augment")(keys[0], images[0], False)
    np.testing.assert_allclose(plain, data.normalize(images[0]), atol=1e-6)
