"""WideResNet: argument validation, shapes, config round trip and the paper model's size."""

import numpy as np
import pytest

from jem_tf.models import WideResNet

# WRN-28-10 for 32x32x3 and 10 classes with no normalisation: the reference code's Wide_ResNet
# backbone plus its class head, counted with biases on every convolution as the reference has.
WRN_28_10_PARAMETERS = 36_471_338


def _expected_parameters(depth, width, channels, classes):
    """Closed-form count for norm='none', conv biases on, the oracle for the pinned number."""
    n = (depth - 4) // 6
    stages = [16, 16 * width, 32 * width, 64 * width]
    total = 3 * 3 * channels * 16 + 16  # stem
    in_channels = 16
    for out_channels in stages[1:]:
        for _ in range(n):
            total += 9 * in_channels * out_channels + out_channels  # conv1
            total += 9 * out_channels * out_channels + out_channels  # conv2
            if in_channels != out_channels:
                total += in_channels * out_channels + out_channels  # 1x1 shortcut
            in_channels = out_channels
    return total + stages[3] * classes + classes


def test_wrn_28_10_has_the_reference_parameter_count():
    model = WideResNet(28, 10, 10)
    model.build((None, 32, 32, 3))
    assert model.count_params() == WRN_28_10_PARAMETERS
    assert _expected_parameters(28, 10, 3, 10) == WRN_28_10_PARAMETERS


@pytest.mark.parametrize(
    "depth,width,norm,activation,shape",
    [
        (10, 1, "none", "leaky_relu", (8, 8, 1)),
        (16, 2, "batch", "swish", (16, 16, 3)),
        (10, 1, "group", "leaky_relu", (12, 10, 3)),
    ],
)
def test_logits_shape_for_any_input_size_and_norm(depth, width, norm, activation, shape):
    model = WideResNet(depth, width, 7, norm=norm, activation=activation, dropout_rate=0.1)
    logits = model(np.zeros((2,) + shape, np.float32))
    assert logits.shape == (2, 7)
    if norm == "none":
        assert model.count_params() == _expected_parameters(depth, width, shape[-1], 7)


def test_inference_is_deterministic_with_dropout_off():
    model = WideResNet(10, 1, 3, dropout_rate=0.5)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
    assert not np.allclose(model(x, training=True), model(x, training=False))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(depth=12), "6n\\+4"),
        (dict(width=0), "width"),
        (dict(num_classes=1), "num_classes"),
        (dict(norm="layer"), "norm"),
        (dict(activation="relu6"), "activation"),
        (dict(dropout_rate=1.0), "dropout_rate"),
    ],
)
def test_bad_arguments_are_refused_with_the_received_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WideResNet(**{"depth": 10, "width": 1, **kwargs})


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="at least 8x8"):
        WideResNet(10, 1, 10).build((None, 4, 4, 3))


def test_config_round_trip_rebuilds_the_same_architecture():
    model = WideResNet(16, 2, 5, norm="group", activation="swish", dropout_rate=0.2)
    clone = WideResNet.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    model.build((None, 8, 8, 3))
    clone.build((None, 8, 8, 3))
    assert clone.count_params() == model.count_params()


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_a_checkpoint_of_the_model_alone_restores_every_weight(tmp_path, norm):
    import tensorflow as tf

    model = WideResNet(10, 1, 3, norm=norm)
    model.build((None, 8, 8, 1))
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    fresh = WideResNet(10, 1, 3, norm=norm)
    fresh.build((None, 8, 8, 1))
    tf.train.Checkpoint(model=fresh).restore(path).assert_consumed()
    assert len(fresh.weights) == len(model.weights)
    for saved, restored in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())


def test_initialisation_is_pytorchs_default_uniform_fan_in():
    """nn.Conv2d / nn.Linear defaults, which the reference keeps: kernels and biases are
    U(+-1/sqrt(fan_in)), fan_in = kernel height * width * input channels (or input features)."""
    model = WideResNet(10, 4, 10)
    model.build((None, 32, 32, 3))
    layers = [model.stem, model.classifier]
    for name in model.block_names:
        block = getattr(model, name)
        layers += [block.conv1, block.conv2] + ([block.shortcut] if block.shortcut is not None else [])
    for layer in layers:
        kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        fan_in = int(np.prod(kernel.shape[:-1]))
        bound = 1.0 / np.sqrt(fan_in)
        for values, what in ((kernel, "kernel"), (bias, "bias")):
            assert np.all(np.abs(values) <= bound), f"{layer.name} {what} exceeds 1/sqrt({fan_in})"
            # Spread over the whole interval (U(-b, b) has standard deviation b/sqrt(3)), not zeros.
            assert np.std(values) > 0.6 * bound / np.sqrt(3), f"{layer.name} {what} is not U(+-1/sqrt(fan_in))"


def test_stride_two_convolutions_pad_one_pixel_on_each_side_like_pytorch():
    """A stride-2 3x3 convolution whose kernel only reads its top-left tap sees, at output (0, 0),
    the padding row/column before the image with PyTorch's padding=1 (Keras 'same' would not)."""
    model = WideResNet(10, 1, 10)
    model.build((None, 8, 8, 1))
    block = model.stage2_block1
    images = np.arange(1, 1 + 8 * 8 * 32, dtype=np.float32).reshape(1, 8, 8, 32)  # conv2 maps 32 -> 32
    kernel = np.zeros(block.conv2.kernel.shape, np.float32)
    kernel[0, 0, 0, 0] = 1.0
    block.conv2.kernel.assign(kernel)
    block.conv2.bias.assign(np.zeros(block.conv2.bias.shape, np.float32))
    out = block.conv2(block.pad2(images)).numpy()
    assert out.shape == (1, 4, 4, 32)
    # Output (i, j) reads input (2i - 1, 2j - 1): the padding at i=0 or j=0, the image after.
    assert out[0, 0, 0, 0] == 0.0 and out[0, 0, 1, 0] == 0.0
    assert out[0, 1, 1, 0] == images[0, 1, 1, 0]
