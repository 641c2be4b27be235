"""What every exported signature must return, computed directly from the in-memory network.

This is the yardstick a deployment is checked against (the tests compare the keras-free reload,
`saved_model_cli` and the C++ serving path with it). It shares nothing with the serving graph in
`export.serving_functions` beyond the energy definitions of `jem_tf.energy` and the sampler of
`jem_tf.sampling`: encoded images are decoded with Pillow rather than TensorFlow, and no input
checks are applied, so the inputs must be valid.
"""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from export import signatures as sig
from jem_tf import energy
from jem_tf.sampling import sgld


def decode_images(encoded_images, channels: int) -> np.ndarray:
    """float32 [n, H, W, C] in [-1, 1] from encoded images, as the training data is scaled."""
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    pixels = [np.asarray(Image.open(io.BytesIO(bytes(data))).convert(mode), np.uint8) for data in encoded_images]
    pixels = np.stack(pixels)
    if channels == 1:
        pixels = pixels[..., np.newaxis]
    return pixels.astype(np.float32) / 127.5 - 1.0


def _classify(network, images, ood_threshold) -> dict:
    logits = tf.cast(network(images, training=False), tf.float32)
    log_px = energy.log_marginal(logits).numpy()
    outputs = {
        sig.LOGITS: logits.numpy(),
        sig.PROBABILITIES: energy.class_probabilities(logits).numpy(),
        sig.CLASS_ID: np.argmax(logits.numpy(), axis=-1).astype(np.int32),
        sig.LOG_PX: log_px,
    }
    if ood_threshold is not None:
        outputs[sig.IS_OUT_OF_DISTRIBUTION] = log_px < ood_threshold
    return outputs


def expected_outputs(network, signature_name: str, inputs: dict, ood_threshold=None) -> dict:
    """{output key: numpy array} that `signature_name` must return for valid `inputs`."""
    contract = sig.contract_for(signature_name)
    if contract.name == sig.CLASSIFY_IMAGE_BYTES:
        images = decode_images(inputs[sig.IMAGE_BYTES], network.input_image_shape[-1])
        return _classify(network, tf.constant(images), ood_threshold)
    # In-range values within the tolerance are clipped by the signatures; valid inputs only.
    images = tf.constant(np.clip(np.asarray(inputs[sig.IMAGES], np.float32), sig.IMAGE_MIN, sig.IMAGE_MAX))
    if contract.name == sig.CLASSIFY:
        return _classify(network, images, ood_threshold)
    if contract.name == sig.ENERGY:
        logits = tf.cast(network(images, training=False), tf.float32)
        _, score = energy.log_density_and_score(
            energy.marginal_log_density(lambda x: network(x, training=False)), images
        )
        return {
            sig.ENERGY_OUTPUT: energy.energy(logits).numpy(),
            sig.CLASS_ENERGIES: energy.class_energies(logits).numpy(),
            sig.SCORE_GRAD_NORM: energy.score_norm(score).numpy(),
        }
    refined = sgld.refine(
        lambda x: network(x, training=False), images, int(inputs[sig.STEPS]), float(inputs[sig.STEP_SIZE]),
        float(inputs[sig.NOISE_STD]), tf.constant(np.asarray(inputs[sig.SEED], np.int64)), clamp=True,
    )
    return {sig.REFINED_IMAGES: refined.numpy(), **_classify(network, refined, ood_threshold)}
