"""Carries an image folder to a machine that has torch but no TensorFlow (the lent GPU machine).

    python -m benchmarks.image_pack pack --data=../shared/data/cifar10_jpg --output=PACK.npz
    python3 benchmarks/image_pack.py unpack --pack=PACK.npz --output_dir=NPZ_DIR

`pack` (needs TensorFlow and Pillow) stores each split's encoded files as they are, in the order
jem_tf's folder loader reads them, with their labels: the whole CIFAR-10 training set is 48 MB this
way, against 154 MB decoded, so it fits what a call to that machine may carry. `unpack` (numpy and
Pillow only) decodes them again and writes the train.npz / test.npz that
`benchmarks/reference_worker.py train` reads (as `benchmarks.compare_training` writes them here).

Pillow decodes JPEG with the accurate integer IDCT, TensorFlow's `decode_image` with the fast one,
so the two differ by a few levels in some pixels; `pack` measures that difference over every image
(stored in the pack and printed by both commands: on the CIFAR-10 JPEGs at most 5 of 255 levels in
about 65 % of the values, where the N(0, 0.03) training noise on [-1, 1] is about 4 levels). It also
stores a SHA-1 of each image as Pillow decodes it here, which `unpack` checks, so the far machine's
Pillow gives exactly this machine's pixels or the command says how many differ and exits 1.

Exit codes: 0 done; 1 the far machine's Pillow decoded other pixels; 2 bad arguments or files.
"""

import argparse
import hashlib
import io
import os
import sys

import numpy as np

SPLITS = ("train", "test")
EXIT_MISMATCH, EXIT_USAGE = 1, 2


def pixel_digest(pixels: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).digest()


def pack(data: str, output: str) -> dict:
    """Writes OUTPUT (.npz): per split the files' bytes, offsets, labels and Pillow's pixel digests, and
    how far Pillow's pixels are from TensorFlow's. Returns split -> (images, max |difference|, share of
    differing values)."""
    if __package__ in (None, ""):
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from jem_tf.data import folder, sources  # noqa: PLC0415

    images = sources.load(f"folder:{data}", validation_fraction=0.0)
    listing = folder.list_folder(os.path.expanduser(data))  # the order the loader's datasets keep
    arrays, counts = {}, {}
    for split, dataset in (("train", images.train), ("test", images.test)):
        paths = [path for path, _ in listing.examples[split]]
        encoded = [open(path, "rb").read() for path in paths]
        digests, labels, largest, differing = [], [], 0, 0
        for batch_images, batch_labels in dataset.batch(1000):
            for tf_pixels in batch_images.numpy():
                if len(digests) == len(encoded):
                    break
                pillow_pixels = decode_with_pillow(encoded[len(digests)])
                if pillow_pixels.shape != tf_pixels.shape:
                    raise ValueError(f"{paths[len(digests)]}: Pillow decodes {pillow_pixels.shape}, the loader "
                                     f"{tf_pixels.shape} (resized folders are not supported here).")
                difference = np.abs(pillow_pixels.astype(np.int16) - tf_pixels)
                largest, differing = max(largest, int(difference.max())), differing + int((difference > 0).sum())
                digests.append(pixel_digest(pillow_pixels))
            labels.extend(batch_labels.numpy().tolist())
        if len(digests) != len(encoded) or len(labels) != len(encoded):
            raise ValueError(f"{data}: the loader read {len(labels)} {split} images but the listing has "
                             f"{len(encoded)} (bad files are not supported here).")
        arrays[f"{split}_bytes"] = np.frombuffer(b"".join(encoded), np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
        arrays[f"{split}_labels"] = np.asarray(labels, np.int64)
        arrays[f"{split}_digests"] = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 20)
        arrays[f"{split}_tf_difference"] = np.asarray([largest, differing / max(1, len(labels) * tf_pixels.size)])
        counts[split] = (len(encoded), largest, round(differing / max(1, len(labels) * tf_pixels.size), 3))
    np.savez(output, **arrays)
    return counts


def decode_with_pillow(encoded: bytes) -> np.ndarray:
    from PIL import Image  # noqa: PLC0415

    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert("RGB"), np.uint8)


def unpack(pack_path: str, output_dir: str) -> dict:
    """Decodes the pack with Pillow into OUTPUT_DIR/{train,test}.npz. Returns split -> (images whose
    pixels differ from the packing machine's Pillow, (max |difference|, share) to TensorFlow's)."""
    os.makedirs(output_dir, exist_ok=True)
    mismatches = {}
    with np.load(pack_path) as arrays:
        for split in SPLITS:
            data, offsets = arrays[f"{split}_bytes"].tobytes(), arrays[f"{split}_offsets"]
            digests = arrays[f"{split}_digests"]
            pixels = np.stack([decode_with_pillow(data[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)])
            differing = sum(pixel_digest(p) != d.tobytes() for p, d in zip(pixels, digests))
            mismatches[split] = (differing, tuple(arrays[f"{split}_tf_difference"].tolist()))
            np.savez(os.path.join(output_dir, f"{split}.npz"), images=pixels, labels=arrays[f"{split}_labels"])
    return mismatches


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pack_parser = commands.add_parser("pack", help="image folder -> pack (needs TensorFlow)")
    pack_parser.add_argument("--data", required=True, help="folder PATH/{train,test}/<class>/<image>")
    pack_parser.add_argument("--output", required=True, help="the pack (.npz) to write")
    unpack_parser = commands.add_parser("unpack", help="pack -> train.npz, test.npz (numpy and Pillow only)")
    unpack_parser.add_argument("--pack", required=True)
    unpack_parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            counts = pack(args.data, args.output)
            sys.stderr.write(f"Packed {args.data} into {args.output}: split -> (images, max |Pillow - TensorFlow| "
                             f"pixel difference, share of values that differ) {counts}.\n")
            return 0
        mismatches = unpack(args.pack, args.output_dir)
    except (OSError, ValueError, KeyError) as error:
        sys.stderr.write(f"image_pack {args.command}: {error}\n")
        return EXIT_USAGE
    if any(differing for differing, _ in mismatches.values()):
        sys.stderr.write(f"This Pillow decoded other pixels than the packing machine's: split -> (images, "
                         f"difference to TensorFlow's) {mismatches}.\n")
        return EXIT_MISMATCH
    sys.stderr.write(f"Unpacked {args.pack} into {args.output_dir}: the packing machine's Pillow pixels exactly; "
                     f"split -> (0, (max |difference|, share) to TensorFlow's) {mismatches}.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
