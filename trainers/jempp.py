"""JEM++ (Yang & Ji, "JEM++: Improved Techniques for Training JEM", ICCV 2021): JEM whose chains
move by the proximal sampler and start from class-wise Gaussians of the training images.

  * Proximal sampler (`jem_tf.sampling.proximal`): each sampler step clips the input gradient to
    +-proximal_max_grad, then makes proximal_inner_steps moves of sgld_step_size times it, clipping
    the images to [-1, 1] after each, then adds sgld_noise. JEM++'s CIFAR-10 setting: 10 steps,
    5 inner moves of 0.2, bound 1, no noise (jem_tf.configs.objectives.JEMPPConfig).
  * Informative initialisation (`jem_tf.sampling.informative_init`, chain_init="informative"): the
    buffer's chains, and the chains re-initialised with probability reinit_freq, are drawn from
    per-class Gaussians fitted on the training images. The Gaussians are non-trainable variables in
    the checkpoint; a resumed session fits them again from its data and refuses to continue when
    they differ (the data changed).

JEM++ trains with BatchNorm (--norm=batch); that relies on JEM's working BatchNorm (issue #8,
variant 5), not on anything here.
"""

import tensorflow as tf
from absl import logging

from jem_tf.sampling import informative_init
from jem_tf.sampling.proximal import ProximalBounds
from trainers import registry
from trainers.jem import JEM

# Salt of the stateless seed the initial chains are drawn from: (config seed, salt).
_CHAIN_INIT_SALT = 0x1DEA


@registry.register("jempp")
class JEMPP(JEM):
    """`JEM` with the proximal sampler and (by default) the informative chain initialisation."""

    def __init__(
        self,
        *args,
        proximal_max_grad: float = 1.0,
        proximal_inner_steps: int = 5,
        chain_init: str = "informative",
        chain_init_jitter: float = informative_init.DEFAULT_JITTER,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if chain_init not in ("uniform", "informative"):
            raise ValueError(f"chain_init must be 'uniform' or 'informative'; received {chain_init!r}.")
        self.proximal_bounds = ProximalBounds(max_grad=float(proximal_max_grad), inner_steps=int(proximal_inner_steps))
        self.chain_init = chain_init
        self.chain_init_jitter = float(chain_init_jitter)
        self.class_gaussians = None

    def build(self, input_shape):
        super().build(input_shape)
        if self.chain_init == "informative" and self.class_gaussians is None:
            # Zeros until `prepare_for_data` fits them (a new run) or the checkpoint restores them.
            self.class_gaussians = informative_init.ClassGaussians(self.num_classes, self.input_image_shape)
            self.replay_buffer.initializer = self.class_gaussians

    # -- the loop's hooks (see Classifier) -------------------------------------------------------

    @classmethod
    def from_config(cls, config, **network):
        # JEM's fields, plus JEM++'s (JEM.from_config passes keyword arguments on to the constructor).
        return super().from_config(
            config, **network, proximal_max_grad=config.proximal_max_grad,
            proximal_inner_steps=config.proximal_inner_steps, chain_init=config.chain_init,
            chain_init_jitter=config.chain_init_jitter,
        )

    def prepare_for_data(self, train_images: tf.data.Dataset, restored: bool) -> None:
        """Fits the class Gaussians to the training split (unbatched uint8 images and labels).

        restored=False (a new run): stores them and draws every chain from them.
        restored=True (a resumed run): raises informative_init.DataChangedError unless they equal
        the checkpoint's. Called in the strategy scope, after the restore, before the first step.
        """
        if self.chain_init != "informative":
            return
        fit = informative_init.fit_dataset(train_images, self.num_classes, self.chain_init_jitter)
        if restored:
            self.class_gaussians.check_matches(fit)
            logging.info("The class Gaussians fitted on the training data equal the checkpoint's.")
            return
        self.class_gaussians.assign(fit)
        self.replay_buffer.initialise_chains(tf.constant([self.seed, _CHAIN_INIT_SALT], tf.int64))
        size = fit.means.nbytes + fit.scale_trils.nbytes
        logging.info("Informative initialisation: %d class Gaussians of %d pixels (%.1f MiB in the checkpoint); "
                     "%d chains drawn from them.", self.num_classes, fit.means.shape[1], size / 2**20,
                     self.replay_buffer.size)

    def checkpoint_items(self) -> dict:
        items = super().checkpoint_items()
        if self.class_gaussians is not None:
            items["class_gaussians"] = self.class_gaussians
        return items

    def get_config(self):
        config = super().get_config()
        config.update(
            proximal_max_grad=self.proximal_bounds.max_grad, proximal_inner_steps=self.proximal_bounds.inner_steps,
            chain_init=self.chain_init, chain_init_jitter=self.chain_init_jitter,
        )
        return config


__all__ = ["JEMPP"]
