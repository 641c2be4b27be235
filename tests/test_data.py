"""Tests for jem_tf.data: offline dataset sources and the deterministic batching pipeline."""

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from jem_tf import data

CIFAR10_JPG_SUBSET = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10_jpg_subset"
TFDS_CASES = [
    # (our name, tfds name, classes, default augmentation)
    ("svhn", "svhn_cropped", 10, "crop"),
    ("cifar10", "cifar10", 10, "crop_flip"),
    ("cifar100", "cifar100", 100, "crop_flip"),
]


def _arrays(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All elements of an unbatched or batched (images, labels) dataset, concatenated."""
    images, labels = [], []
    if ds.element_spec[0].shape.rank == 3:  # unbatched: read in batches, not one element at a time
        ds = ds.batch(4096)
    for image, label in ds:
        images.append(np.asarray(image))
        labels.append(np.asarray(label))
    if not images:
        return np.zeros((0,)), np.zeros((0,))
    return np.concatenate(images), np.concatenate(labels)


def _image_hashes(images: np.ndarray) -> list[str]:
    return [hashlib.sha1(image.tobytes()).hexdigest() for image in images]


def _indexed_dataset(num: int, shape=(8, 8, 1), seed: int = 0) -> tf.data.Dataset:
    """Random uint8 images whose label is their index, so the source of any output is known."""
    images = np.random.default_rng(seed).integers(0, 256, size=(num, *shape), dtype=np.uint8)
    return tf.data.Dataset.from_tensor_slices((images, np.arange(num, dtype=np.int64)))


@pytest.fixture(scope="module")
def digits() -> data.ImageData:
    return data.load("digits")


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_dtypes_and_sizes(digits):
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.image_shape == (8, 8, 1)
    assert digits.class_names == tuple(str(d) for d in range(10))
    assert digits.augmentation in data.pipeline.AUGMENTATIONS
    assert digits.num_train + digits.num_validation + digits.num_test == 1797
    assert digits.num_test == 360  # the fixed 20%
    assert digits.num_validation == round(0.1 * (1797 - 360))
    for split, expected in (
        (digits.train, digits.num_train),
        (digits.validation, digits.num_validation),
        (digits.test, digits.num_test),
    ):
        assert split.element_spec == (
            tf.TensorSpec((8, 8, 1), tf.uint8),
            tf.TensorSpec((), tf.int64),
        )
        images, labels = _arrays(split)
        assert len(images) == expected
        assert labels.min() >= 0 and labels.max() <= 9
        assert images.max() == 255  # 16 (the raw maximum) is rescaled to 255
    # The test split is stratified: every class is present in it.
    assert set(_arrays(digits.test)[1].tolist()) == set(range(10))


def test_digits_splits_are_disjoint_and_stable(digits):
    hashes = {name: _image_hashes(_arrays(getattr(digits, name))[0]) for name in ("train", "validation", "test")}
    train, validation, test = (set(hashes[name]) for name in ("train", "validation", "test"))
    assert not train & test
    assert not train & validation
    assert not validation & test
    assert len(train | validation | test) == 1797  # every image used exactly once

    again = data.load("digits")
    for name in ("train", "validation", "test"):
        np.testing.assert_array_equal(_arrays(getattr(again, name))[0], _arrays(getattr(digits, name))[0])


def test_digits_test_split_does_not_depend_on_validation_fraction(digits):
    without_validation = data.load("digits", validation_fraction=0.0)
    assert without_validation.num_validation == 0
    assert int(without_validation.validation.cardinality()) == 0
    assert without_validation.validation.element_spec == digits.validation.element_spec
    assert without_validation.num_train == 1797 - 360
    np.testing.assert_array_equal(_arrays(without_validation.test)[0], _arrays(digits.test)[0])


def test_image_data_is_frozen(digits):
    with pytest.raises(dataclasses.FrozenInstanceError):
        digits.num_classes = 3


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_validation_fraction_raises(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        data.load("digits", validation_fraction=fraction)


def test_unknown_dataset_name_lists_valid_ones():
    with pytest.raises(ValueError) as error:
        data.load("mnistt")
    message = str(error.value)
    assert "mnistt" in message
    for name in data.DATASETS:
        assert name in message
    assert "folder:" in message


# ---------------------------------------------------------------------------------------------
# tfds datasets (mocked: no data on this machine)


@pytest.mark.parametrize("name, tfds_name, num_classes, augmentation", TFDS_CASES)
def test_tfds_datasets_under_mock_data(name, tfds_name, num_classes, augmentation, tmp_path):
    del tfds_name
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        loaded = data.load(name, data_dir=str(tmp_path))
        assert loaded.name == name
        assert loaded.image_shape == (32, 32, 3)
        assert loaded.num_classes == num_classes
        assert len(loaded.class_names) == num_classes
        assert loaded.augmentation == augmentation
        spec = (tf.TensorSpec((32, 32, 3), tf.uint8), tf.TensorSpec((), tf.int64))
        for split, count in (
            (loaded.train, loaded.num_train),
            (loaded.validation, loaded.num_validation),
            (loaded.test, loaded.num_test),
        ):
            assert split.element_spec == spec
            assert count == 6  # mock_data yields num_examples for any split or slice
            images, labels = _arrays(split)
            assert images.shape == (6, 32, 32, 3)
            assert ((labels >= 0) & (labels < num_classes)).all()
        images, labels = next(iter(data.make_batches(loaded.train, 4, training=True, augmentation=augmentation)))
        assert images.shape == (4, 32, 32, 3) and labels.dtype == tf.int32

        no_validation = data.load(name, data_dir=str(tmp_path), validation_fraction=0.0)
        assert no_validation.num_validation == 0
        assert _arrays(no_validation.validation)[0].shape[0] == 0


@pytest.mark.parametrize("name, tfds_name, num_classes, augmentation", TFDS_CASES)
def test_unprepared_tfds_dataset_raises_clear_error(name, tfds_name, num_classes, augmentation, tmp_path, monkeypatch):
    del num_classes, augmentation

    def no_download(*args, **kwargs):
        raise AssertionError("jem_tf.data must never download")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load(name, data_dir=str(tmp_path))
    message = str(error.value)
    assert repr(name) in message
    assert tfds_name in message
    assert str(tmp_path) in message
    assert "--data_dir=" in message
    assert "download_and_prepare" in message
    assert "must never download" not in message


# ---------------------------------------------------------------------------------------------
# folder:PATH


@pytest.mark.skipif(not CIFAR10_JPG_SUBSET.is_dir(), reason=f"shared data set not found at {CIFAR10_JPG_SUBSET}")
def test_folder_cifar10_jpg_subset():
    loaded = data.load(f"folder:{CIFAR10_JPG_SUBSET}")
    assert loaded.name == f"folder:{CIFAR10_JPG_SUBSET}"
    assert loaded.num_classes == 10
    assert loaded.class_names[:2] == ("airplane", "automobile")
    assert loaded.image_shape == (32, 32, 3)
    assert loaded.augmentation == "crop_flip"
    assert (loaded.num_train, loaded.num_validation, loaded.num_test) == (9000, 1000, 2000)
    spec = (tf.TensorSpec((32, 32, 3), tf.uint8), tf.TensorSpec((), tf.int64))
    assert loaded.train.element_spec == spec and loaded.test.element_spec == spec
    images, labels = _arrays(loaded.validation.take(50))
    assert images.shape == (50, 32, 32, 3)
    assert len(set(labels.tolist())) > 3  # the hold-out is class-mixed, not one class folder
    batch, _ = next(iter(data.make_batches(loaded.test, 16, training=False)))
    assert batch.shape == (16, 32, 32, 3)


def _write_image_tree(root: Path, layout: dict, size=(12, 12), mode="RGB", seed=0) -> None:
    """layout: {split: {class_name: number_of_images}}; every image is random (hence distinct)."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    for split, classes in layout.items():
        for class_name, count in classes.items():
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
                Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(folder / f"{index}.png")


def test_folder_tree_layout(tmp_path):
    _write_image_tree(tmp_path, {"train": {"cat": 3, "dog": 3}, "test": {"cat": 1, "dog": 2}})
    loaded = data.load(f"folder:{tmp_path}", validation_fraction=0.5)
    assert loaded.num_classes == 2
    assert loaded.class_names == ("cat", "dog")
    assert loaded.image_shape == (12, 12, 3)
    assert (loaded.num_train, loaded.num_validation, loaded.num_test) == (3, 3, 3)
    train_images, train_labels = _arrays(loaded.train)
    validation_images, _ = _arrays(loaded.validation)
    test_images, _ = _arrays(loaded.test)
    assert train_images.shape == (3, 12, 12, 3) and test_images.shape == (3, 12, 12, 3)
    assert not set(_image_hashes(train_images)) & set(_image_hashes(validation_images))
    assert set(train_labels.tolist()) <= {0, 1}
    # PNGs are lossless: the pixels are exactly those written.
    written = {hashlib.sha1(np.asarray(Image.open(p)).tobytes()).hexdigest() for p in tmp_path.glob("train/*/*.png")}
    assert set(_image_hashes(train_images)) | set(_image_hashes(validation_images)) == written
    # Deterministic hold-out.
    again = data.load(f"folder:{tmp_path}", validation_fraction=0.5)
    np.testing.assert_array_equal(_arrays(again.validation)[0], validation_images)


def test_folder_resizes_odd_sized_and_grayscale_images(tmp_path):
    _write_image_tree(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1}})
    _write_image_tree(tmp_path / "extra", {"test": {"b": 1}}, size=(20, 16), mode="L", seed=1)
    (tmp_path / "extra/test/b/0.png").rename(tmp_path / "test/a/odd.png")
    loaded = data.load(f"folder:{tmp_path}", validation_fraction=0.0)
    images, _ = _arrays(loaded.test)
    assert images.shape == (2, 12, 12, 3)


def test_folder_missing_path_or_split_raises(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DatasetUnavailableError, match="nowhere") as error:
        data.load(f"folder:{missing}")
    assert "train" in str(error.value) and "test" in str(error.value)

    _write_image_tree(tmp_path / "only_train", {"train": {"a": 2}})
    with pytest.raises(data.DatasetUnavailableError, match="only_train") as error:
        data.load(f"folder:{tmp_path / 'only_train'}")
    assert "test" in str(error.value)

    with pytest.raises(ValueError, match="folder"):
        data.load("folder:")


def test_folder_order_and_hold_out_match_tfds_image_folder(tmp_path):
    """Earlier versions read folders with tfds.ImageFolder: existing runs must keep their data order."""
    _write_image_tree(tmp_path, {"train": {"a": 5, "b": 4, "c": 3}, "test": {"a": 2, "b": 1, "c": 1}})
    loaded = data.load(f"folder:{tmp_path}", validation_fraction=0.25)
    reference = tfds.ImageFolder(str(tmp_path)).as_dataset(split="train", as_supervised=True, shuffle_files=False)
    expected_images, expected_labels = _arrays(reference)
    images, labels = _arrays(loaded.validation.concatenate(loaded.train))
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)


def _corrupt_files(folder: Path) -> dict:
    """A truncated PNG, an empty JPEG, text named .png and a 4x4 image: each one kind of bad file."""
    good = folder / "0.png"
    files = {
        "truncated.png": good.read_bytes()[:40],
        "empty.jpg": b"",
        "text.png": b"hello, I am not an image",
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "tiny.png")
    return {**files, "tiny.png": None}


@pytest.mark.parametrize("split", ["train", "test"])
def test_folder_bad_files_are_named_in_one_error(tmp_path, split):
    _write_image_tree(tmp_path, {"train": {"a": 3, "b": 3}, "test": {"a": 2, "b": 2}})
    bad = _corrupt_files(tmp_path / split / "b")
    with pytest.raises(data.InvalidDatasetError) as error:
        data.load(f"folder:{tmp_path}")
    message = str(error.value)
    assert f"{len(bad)} file(s) do not decode" in message and "--skip_bad_files" in message
    for name in bad:
        assert str(tmp_path / split / "b" / name) in message
    assert "Input is empty" in message and "4x4 pixels" in message  # the reason, per file
    assert "function_node" not in message


def test_folder_skip_bad_files_leaves_them_out_with_a_count(tmp_path, caplog):
    _write_image_tree(tmp_path, {"train": {"a": 3, "b": 3}, "test": {"a": 2, "b": 2}})
    _corrupt_files(tmp_path / "train" / "b")
    _corrupt_files(tmp_path / "test" / "a")
    loaded = data.load(f"folder:{tmp_path}", validation_fraction=0.0, skip_bad_files=True)
    assert (loaded.num_train, loaded.num_test) == (6, 4)
    assert len(_arrays(loaded.train)[0]) == 6 and len(_arrays(loaded.test)[0]) == 4  # every one decodes
    assert sum("skipping 8 bad file(s)" in r.getMessage() for r in caplog.records) == 1


def test_folder_non_image_files_are_reported_once_not_silently_ignored(tmp_path, caplog):
    _write_image_tree(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1}})
    (tmp_path / "train/a/notes.txt").write_text("x")
    (tmp_path / "train/a/scan.bmp").write_bytes(b"BM")
    (tmp_path / "train/a/.DS_Store").write_bytes(b"")
    (tmp_path / "train/stray.png").write_bytes(b"")  # a file where class folders belong
    (tmp_path / "README").write_text("x")
    loaded = data.load(f"folder:{tmp_path}", validation_fraction=0.0)
    assert loaded.num_train == 4
    reports = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(reports) == 1
    assert "ignoring 5 entr(ies)" in reports[0] and ".txt: 1" in reports[0] and ".bmp: 1" in reports[0]
    assert "notes.txt" in reports[0]


def test_folder_empty_train_class_is_refused_or_dropped(tmp_path, caplog):
    _write_image_tree(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1, "c": 2}})
    (tmp_path / "train/c").mkdir()  # a class folder without images
    with pytest.raises(data.InvalidDatasetError, match=r"class\(es\) c have no usable training images.*"
                                                        r"--drop_empty_classes"):
        data.load(f"folder:{tmp_path}")
    loaded = data.load(f"folder:{tmp_path}", validation_fraction=0.0, drop_empty_classes=True)
    assert loaded.class_names == ("a", "b") and loaded.num_classes == 2
    assert loaded.num_test == 2 and set(_arrays(loaded.test)[1].tolist()) == {0, 1}
    assert any("dropping 1 class(es)" in r.getMessage() and "2 test image(s)" in r.getMessage()
               for r in caplog.records)


def test_folder_with_fewer_than_two_classes_is_refused(tmp_path):
    _write_image_tree(tmp_path, {"train": {"only": 3}, "test": {"only": 1}})
    with pytest.raises(data.InvalidDatasetError, match="1 class\\(es\\) with training images.*at least 2"):
        data.load(f"folder:{tmp_path}")


def test_folder_symlinks_out_of_the_tree_are_refused_and_inside_it_allowed(tmp_path):
    root = tmp_path / "data"
    _write_image_tree(root, {"train": {"a": 2, "b": 2}, "test": {"a": 1}})
    (root / "train/a/inside.png").symlink_to(root / "train/b/0.png")
    assert data.load(f"folder:{root}", validation_fraction=0.0).num_train == 5
    outside = tmp_path / "outside.png"
    outside.write_bytes((root / "train/b/1.png").read_bytes())  # even a valid image outside is refused
    (root / "train/b/x.png").symlink_to("/etc/passwd")
    (root / "test/a/y.png").symlink_to(outside)
    with pytest.raises(data.InvalidDatasetError, match="2 symlink\\(s\\) leading outside") as error:
        data.load(f"folder:{root}", skip_bad_files=True)
    assert "x.png -> /etc/passwd" in str(error.value) and "y.png" in str(error.value)


# ---------------------------------------------------------------------------------------------
# make_batches


def test_to_model_range():
    values = data.to_model_range(tf.constant([0, 255, 51], tf.uint8))
    assert values.dtype == tf.float32
    np.testing.assert_allclose(values.numpy(), [-1.0, 1.0, 51 / 127.5 - 1.0], rtol=1e-6)


def test_eval_batches_in_range_unshuffled_and_unaugmented(digits):
    source_images, source_labels = _arrays(digits.test)
    batches = data.make_batches(
        digits.test, 100, training=False, augmentation="crop_flip", data_noise=0.5, seed=3, epoch=7
    )
    assert batches.element_spec == (
        tf.TensorSpec((None, 8, 8, 1), tf.float32),
        tf.TensorSpec((None,), tf.int32),
    )
    images, labels = _arrays(batches)
    assert [len(b[1]) for b in batches] == [100, 100, 100, 60]  # last partial batch kept
    np.testing.assert_array_equal(labels, source_labels)  # source order
    np.testing.assert_allclose(images, source_images / 127.5 - 1.0, atol=1e-6)  # no noise or augmentation
    assert images.min() >= -1.0 and images.max() <= 1.0
    np.testing.assert_array_equal(_arrays(batches)[0], images)


def test_training_batches_without_noise_stay_in_range(digits):
    batches = data.make_batches(digits.train, 64, training=True, augmentation="crop_flip", seed=1)
    assert batches.element_spec == (
        tf.TensorSpec((64, 8, 8, 1), tf.float32),
        tf.TensorSpec((64,), tf.int32),
    )
    images, labels = _arrays(batches)
    assert len(labels) == (digits.num_train // 64) * 64  # drop_remainder by default
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() == -1.0 and images.max() == 1.0


def test_training_noise_has_the_requested_std():
    constant = tf.data.Dataset.from_tensor_slices(
        (np.full((64, 16, 16, 3), 128, np.uint8), np.zeros(64, np.int64))
    )
    images, _ = _arrays(data.make_batches(constant, 32, training=True, data_noise=0.1, seed=5))
    noise = images - (128 / 127.5 - 1.0)
    assert abs(noise.mean()) < 0.005
    assert noise.std() == pytest.approx(0.1, rel=0.03)
    # Different examples get different noise.
    assert not np.allclose(noise[0], noise[1])


@pytest.mark.parametrize(
    "augmentation, shape", [("crop", (8, 8, 1)), ("crop_flip", (8, 8, 1)), ("crop_flip", (32, 32, 3))]
)
def test_augmentation_is_a_padded_crop_or_its_mirror(augmentation, shape):
    source = _indexed_dataset(64, shape)
    source_images = _arrays(source)[0].astype(np.float32) / 127.5 - 1.0
    images, labels = _arrays(data.make_batches(source, 16, training=True, augmentation=augmentation, seed=2))
    assert images.shape == (64, *shape)
    pad = data.crop_padding(shape[0], shape[1])
    assert pad == (1 if shape[0] == 8 else 4)
    offsets, flips = set(), set()
    for image, label in zip(images, labels):
        padded = np.pad(source_images[label], [(pad, pad), (pad, pad), (0, 0)], mode="reflect")
        matches = []
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                crop = padded[dy : dy + shape[0], dx : dx + shape[1]]
                for flipped in (False, True):
                    if np.array_equal(image, crop[:, ::-1] if flipped else crop):
                        matches.append((dy, dx, flipped))
        assert matches, f"example {label} is not a crop of its padded source"
        offsets.update((dy, dx) for dy, dx, _ in matches)
        flips.update(flipped for _, _, flipped in matches)
    assert len(offsets) > 3  # crops really move
    assert flips == ({False, True} if augmentation == "crop_flip" else {False})


def test_training_order_is_reproducible_per_seed_and_epoch():
    source = _indexed_dataset(200)

    def epoch_stream(seed, epoch):
        batches = data.make_batches(
            source, 20, training=True, augmentation="crop_flip", data_noise=0.03, seed=seed, epoch=epoch
        )
        return _arrays(batches)

    images, order = epoch_stream(seed=0, epoch=0)
    again_images, again_order = epoch_stream(seed=0, epoch=0)
    np.testing.assert_array_equal(order, again_order)
    np.testing.assert_array_equal(images, again_images)  # augmentation and noise too
    assert sorted(order.tolist()) == list(range(200))  # a permutation of the whole (small) dataset
    assert order.tolist() != list(range(200))
    _, next_epoch_order = epoch_stream(seed=0, epoch=1)
    _, other_seed_order = epoch_stream(seed=1, epoch=0)
    assert next_epoch_order.tolist() != order.tolist()
    assert other_seed_order.tolist() != order.tolist()


def test_skip_batches_resumes_the_same_stream():
    source = _indexed_dataset(100)
    kwargs = dict(training=True, augmentation="crop_flip", data_noise=0.03, seed=4, epoch=2)
    full = list(data.make_batches(source, 16, **kwargs))
    resumed = list(data.make_batches(source, 16, skip_batches=3, **kwargs))
    assert len(full) == 6 and len(resumed) == 3
    for (images, labels), (full_images, full_labels) in zip(resumed, full[3:]):
        np.testing.assert_array_equal(labels, full_labels)
        np.testing.assert_array_equal(images, full_images)


def test_unaugmented_view_is_the_same_images_with_the_same_noise_but_no_crop_or_flip():
    source = _indexed_dataset(64, (8, 8, 3))
    source_images = _arrays(source)[0].astype(np.float32) / 127.5 - 1.0
    kwargs = dict(training=True, augmentation="crop_flip", data_noise=0.05, seed=6, epoch=1)
    plain = list(data.make_batches(source, 16, **kwargs))
    with_view = list(data.make_batches(source, 16, unaugmented_view=True, **kwargs))
    assert len(with_view) == len(plain) == 4
    moved = 0
    for (images, labels), (view_images, view_labels, unaugmented) in zip(plain, with_view):
        # The first two elements are exactly the stream without the view.
        np.testing.assert_array_equal(view_images, images)
        np.testing.assert_array_equal(view_labels, labels)
        noise = unaugmented.numpy() - source_images[labels.numpy()]
        assert noise.std() == pytest.approx(0.05, rel=0.15)
        # The noise is the augmented view's: without it, the augmented image is a crop (or its
        # mirror) of the padded source.
        for image, image_noise, label in zip(images.numpy(), noise, labels.numpy()):
            padded = np.pad(source_images[label], [(1, 1), (1, 1), (0, 0)], mode="reflect")
            crops = [padded[dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)]
            assert any(np.allclose(image - image_noise, view, atol=1e-5)
                       for crop in crops for view in (crop, crop[:, ::-1])), f"example {label}"
        moved += int(np.sum(np.any(images.numpy() != unaugmented.numpy(), axis=(1, 2, 3))))
    assert moved > 32  # crops and flips really differ from the un-augmented view
    # Without crop/flip the views are identical; resuming mid-epoch keeps the view in step.
    same = data.make_batches(source, 16, training=True, data_noise=0.05, seed=6, unaugmented_view=True)
    for images, _, unaugmented in same:
        np.testing.assert_array_equal(unaugmented, images)
    resumed = list(data.make_batches(source, 16, unaugmented_view=True, skip_batches=2, **kwargs))
    for got, want in zip(resumed, with_view[2:]):
        for got_part, want_part in zip(got, want):
            np.testing.assert_array_equal(got_part, want_part)


def test_make_batches_rejects_bad_arguments(digits):
    with pytest.raises(ValueError, match="augmentation"):
        data.make_batches(digits.train, 8, training=True, augmentation="flip")
    with pytest.raises(ValueError, match="batch_size"):
        data.make_batches(digits.train, 0, training=True)
    with pytest.raises(ValueError, match="data_noise"):
        data.make_batches(digits.train, 8, training=True, data_noise=-1.0)
    with pytest.raises(ValueError, match="skip_batches"):
        data.make_batches(digits.train, 8, training=True, skip_batches=-1)
