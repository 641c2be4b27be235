"""JEM++'s informative initialisation (Yang & Ji, ICCV 2021): chains start from class-wise
Gaussians fitted on the training images instead of U(-1, 1) noise.

For every class k, over its training images x (flattened, in the model's [-1, 1] range):

  mean_k = mean(x),   cov_k = (x - mean_k)^T (x - mean_k) / n_k      (1/n, as JEM++ computes it)
  L_k    = cholesky(cov_k + jitter * I)

The jitter (JEM++: 1e-4) makes the factorisation exist when a class has fewer images than pixels
or constant pixels (digits' borders): its covariance is then rank-deficient. A chain is drawn as
`clip(mean_k + L_k z, -1, 1)`, z ~ N(0, I) from a stateless seed, for a class k drawn uniformly
(or the chain's own class where it has one).

`ClassGaussians` holds (mean_k, L_k) as non-trainable variables, so they travel in the checkpoint;
a resumed run fits them again from its data and `check_matches` refuses a run whose data changed.
Storage: K * D^2 float32 for D = H*W*C pixels (CIFAR-10: 10 * 3072^2 * 4 bytes = 377 MB).
"""

import dataclasses

import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf.data.pipeline import to_model_range

# JEM++ adds 1e-4 * I to every class covariance before sampling from it.
DEFAULT_JITTER = 1e-4
# A refit is compared with the stored fit within these (float32 storage, another BLAS on another
# host); a changed dataset moves a class mean by about 1/n_k of a pixel range, far more.
MATCH_RTOL = 1e-4
MATCH_ATOL = 1e-5


class DataChangedError(ValueError):
    """The class Gaussians fitted on this run's data differ from those in its checkpoint."""


@dataclasses.dataclass(frozen=True)
class GaussianFit:
    """Class-wise Gaussians: `means` [K, D], `scale_trils` [K, D, D] (L_k, lower-triangular, with
    L_k L_k^T = cov_k + jitter I), `counts` [K] images per class, all numpy."""

    means: np.ndarray
    scale_trils: np.ndarray
    counts: np.ndarray
    jitter: float


def fit_class_gaussians(images, labels, num_classes: int, jitter: float = DEFAULT_JITTER) -> GaussianFit:
    """Fits one Gaussian per class to `images` [N, H, W, C] (model range [-1, 1]) in float64.

    Raises:
      ValueError: a class has no image (its Gaussian is undefined), or a bad argument.
    """
    if not jitter > 0:
        raise ValueError(f"jitter must be positive (it makes rank-deficient covariances factorisable); "
                         f"received {jitter!r}.")
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels.")
    flat = images.reshape(images.shape[0], -1)
    dim = flat.shape[1]
    means = np.zeros((num_classes, dim), np.float32)
    scale_trils = np.zeros((num_classes, dim, dim), np.float32)
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    missing = [k for k in range(num_classes) if counts[k] == 0]
    if missing:
        raise ValueError(
            f"Class(es) {missing} have no training image: the informative initialisation fits one Gaussian "
            "per class. Use --chain_init=uniform, or a dataset with images of every class.")
    for k in range(num_classes):
        members = flat[labels == k].astype(np.float64)
        mean = members.mean(axis=0)
        centred = members - mean
        covariance = centred.T @ centred / len(members)
        covariance[np.diag_indices(dim)] += jitter
        means[k] = mean
        scale_trils[k] = np.linalg.cholesky(covariance)
        logging.log_every_n_seconds(logging.INFO, "Fitted the Gaussian of class %d of %d (%d images, %d pixels).",
                                    10, k + 1, num_classes, len(members), dim)
    return GaussianFit(means=means, scale_trils=scale_trils, counts=counts.astype(np.int64), jitter=float(jitter))


def fit_dataset(dataset: tf.data.Dataset, num_classes: int, jitter: float = DEFAULT_JITTER) -> GaussianFit:
    """Fits the class Gaussians to an unbatched `(uint8 image, label)` dataset (e.g.
    `ImageData.train`), read in its order, without augmentation or noise."""
    images, labels = [], []
    for batch_images, batch_labels in dataset.batch(1024).as_numpy_iterator():
        images.append(batch_images)  # uint8: a quarter of float32's memory until the fit
        labels.append(batch_labels)
    if not images:
        raise ValueError("The training set is empty: there is nothing to fit the class Gaussians to.")
    images = to_model_range(np.concatenate(images)).numpy()
    logging.info("Fitting class-wise Gaussians (informative initialisation) to %d training images.", len(images))
    return fit_class_gaussians(images, np.concatenate(labels), num_classes, jitter)


class ClassGaussians(tf.Module):
    """Class-wise Gaussians as non-trainable variables (zeros until `assign`); create inside the
    distribution strategy's scope and save in the checkpoint."""

    def __init__(self, num_classes: int, image_shape, name: str = "class_gaussians"):
        super().__init__(name=name)
        self.num_classes = int(num_classes)
        self.image_shape = tuple(int(d) for d in image_shape)
        dim = int(np.prod(self.image_shape))
        self.means = tf.Variable(tf.zeros((self.num_classes, dim)), trainable=False, name="means")
        self.scale_trils = tf.Variable(tf.zeros((self.num_classes, dim, dim)), trainable=False, name="scale_trils")
        self.counts = tf.Variable(tf.zeros((self.num_classes,), tf.int64), trainable=False, name="counts")
        self.jitter = tf.Variable(0.0, trainable=False, dtype=tf.float64, name="jitter")

    def assign(self, fit: GaussianFit) -> None:
        self.means.assign(fit.means)
        self.scale_trils.assign(fit.scale_trils)
        self.counts.assign(fit.counts)
        self.jitter.assign(fit.jitter)

    def stored_fit(self) -> GaussianFit:
        return GaussianFit(means=self.means.numpy(), scale_trils=self.scale_trils.numpy(),
                           counts=self.counts.numpy(), jitter=float(self.jitter.numpy()))

    def check_matches(self, fit: GaussianFit) -> None:
        """Raises DataChangedError unless `fit` (made from this run's data now) equals the stored
        Gaussians, within MATCH_RTOL / MATCH_ATOL."""
        stored = self.stored_fit()
        problems = []
        if stored.jitter != fit.jitter:
            problems.append(f"jitter {stored.jitter:g} -> {fit.jitter:g}")
        if not np.array_equal(stored.counts, fit.counts):
            problems.append(f"images per class {stored.counts.tolist()} -> {fit.counts.tolist()}")
        for name in ("means", "scale_trils"):
            before, now = getattr(stored, name), getattr(fit, name)
            if before.shape != now.shape:
                problems.append(f"{name} shape {before.shape} -> {now.shape}")
            elif not np.allclose(before, now, rtol=MATCH_RTOL, atol=MATCH_ATOL):
                problems.append(f"{name} differ by up to {np.max(np.abs(before - now)):.3g}")
        if problems:
            raise DataChangedError(
                "The class Gaussians of the informative initialisation, fitted again on this run's training data, "
                f"differ from those in the checkpoint ({'; '.join(problems)}): the training data changed since "
                "the run started. Resume with the data (and --dataset, --validation_fraction / --validation_size) "
                "it started with, or start a new --workdir.")

    def sample(self, classes, seed, batch_size=None, offset=0) -> tf.Tensor:
        """Images [n, H, W, C] in [-1, 1] drawn from the Gaussians of `classes` [n] (int).

        The normal draws are a stateless function of `seed` for a batch of `batch_size` rows (default n),
        of which rows [offset, offset + n) are used: a replica's slice of a global batch gets the
        rows the whole batch would get (as `sgld_sample` draws its noise).
        """
        classes = tf.cast(classes, tf.int32)
        count = tf.shape(classes)[0]
        batch_size = count if batch_size is None else batch_size
        dim = int(np.prod(self.image_shape))
        normal = tf.random.stateless_normal(tf.stack([batch_size, dim]), seed=tf.cast(seed, tf.int64))
        normal = normal[offset : offset + count]
        rows = tf.dynamic_partition(tf.range(count), classes, self.num_classes)
        draws = tf.dynamic_partition(normal, classes, self.num_classes)
        # Per class only its own rows: n * D^2 multiply-adds in all, whatever the number of classes.
        per_class = [self.means[k] + tf.matmul(draws[k], self.scale_trils[k], transpose_b=True)
                     for k in range(self.num_classes)]
        flat = tf.dynamic_stitch(rows, per_class)
        images = tf.reshape(flat, tf.concat([[count], self.image_shape], 0))
        return tf.clip_by_value(images, -1.0, 1.0)


__all__ = ["ClassGaussians", "DEFAULT_JITTER", "DataChangedError", "GaussianFit", "fit_class_gaussians",
           "fit_dataset"]
