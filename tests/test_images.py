"""jem_tf.images: the one image grid (training's sample PNGs and the evaluation figures)."""

import numpy as np

from jem_tf.images import image_grid, to_pixels


def test_to_pixels_maps_the_model_range_to_uint8_and_clips():
    pixels = to_pixels(np.array([-1.0, 0.0, 1.0, -3.0, 3.0]))
    assert pixels.dtype == np.uint8
    assert pixels.tolist() == [0, 127, 255, 0, 255]


def test_image_grid_tiles_row_by_row_with_white_gaps():
    images = np.stack([np.full((2, 3, 1), value, np.float32) for value in (-1.0, -1.0, -1.0, 1.0, 1.0)])
    grid = image_grid(images, columns=3, gap=1)
    assert grid.shape == (2 * 3 - 1, 3 * 4 - 1, 1) and grid.dtype == np.uint8
    assert (grid[0:2, 0:3] == 0).all() and (grid[0:2, 8:11] == 0).all()  # first row: three black images
    assert (grid[3:5, 0:3] == 255).all() and (grid[3:5, 4:7] == 255).all()  # second row: two white ones
    assert (grid[2, :] == 255).all() and (grid[:, 3] == 255).all()  # the gaps
    assert (grid[3:5, 8:11] == 255).all()  # the empty last cell stays white


def test_image_grid_uses_at_most_one_column_per_image():
    assert image_grid(np.zeros((2, 4, 4, 3)), columns=8, gap=1).shape == (4, 9, 3)
