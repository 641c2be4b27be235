"""Model-range images ([-1, 1]) as pixels to look at: uint8, tiled into one grid image. The one
grid of the project: training's sample PNGs and the evaluation figures both draw it."""

import numpy as np


def to_pixels(images) -> np.ndarray:
    """[-1, 1] model-range images -> uint8 pixels (clipped: SGLD chains can leave the range)."""
    return np.clip((np.asarray(images) + 1.0) * 127.5, 0, 255).astype(np.uint8)


def image_grid(images, columns: int = 8, gap: int = 1) -> np.ndarray:
    """[n, H, W, C] in [-1, 1] -> one uint8 grid image [rows*(H+gap)-gap, columns*(W+gap)-gap, C],
    row by row, with white gaps (at most n columns)."""
    images = to_pixels(images)
    n, height, width, channels = images.shape
    columns = max(1, min(columns, n))
    rows = max(1, int(np.ceil(n / columns)))
    grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, channels), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = image
    return grid
