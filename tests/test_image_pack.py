"""benchmarks/image_pack.py: an image folder carried as encoded bytes and decoded again without TensorFlow."""

import numpy as np
from PIL import Image

from benchmarks import image_pack
from jem_tf.data import sources


def _jpeg_tree(root, classes=3, per_class=4):
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 2)):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)


def test_unpack_gives_the_loaders_order_labels_and_pillows_pixels(tmp_path):
    _jpeg_tree(tmp_path / "images")
    counts = image_pack.pack(str(tmp_path / "images"), str(tmp_path / "pack.npz"))
    assert [counts[split][0] for split in image_pack.SPLITS] == [12, 6]
    mismatches = image_pack.unpack(str(tmp_path / "pack.npz"), str(tmp_path / "out"))
    assert all(differing == 0 for differing, _ in mismatches.values())
    loaded = sources.load(f"folder:{tmp_path / 'images'}", validation_fraction=0.0)
    for split, dataset in (("train", loaded.train), ("test", loaded.test)):
        tf_images, tf_labels = zip(*[(image.numpy(), int(label)) for image, label in dataset])
        with np.load(tmp_path / "out" / f"{split}.npz") as arrays:
            assert arrays["labels"].tolist() == list(tf_labels)
            # The same images in the same order: within the JPEG decoders' few levels of each other.
            difference = np.abs(arrays["images"].astype(int) - np.stack(tf_images))
            assert difference.max() <= 8 and difference.max() == counts[split][1]


def test_unpack_exits_1_when_pixels_differ_from_the_packing_machines(tmp_path):
    _jpeg_tree(tmp_path / "images", classes=2, per_class=1)
    image_pack.pack(str(tmp_path / "images"), str(tmp_path / "pack.npz"))
    with np.load(tmp_path / "pack.npz") as arrays:
        tampered = dict(arrays)
    tampered["test_digests"] = tampered["test_digests"].copy()
    tampered["test_digests"][0, 0] ^= 1
    np.savez(tmp_path / "tampered.npz", **tampered)
    code = image_pack.main(["unpack", f"--pack={tmp_path / 'tampered.npz'}", f"--output_dir={tmp_path / 'out'}"])
    assert code == image_pack.EXIT_MISMATCH
    assert image_pack.main(["unpack", f"--pack={tmp_path / 'none.npz'}", f"--output_dir={tmp_path / 'o'}"]) == 2
