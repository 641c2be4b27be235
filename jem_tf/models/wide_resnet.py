"""Wide residual network (Zagoruyko & Komodakis, 2016) as used by JEM.

Pre-activation blocks; normalisation is optional because the paper removes batch norm so that the
logits, and therefore the energy, are a deterministic function of the input.
"""

import math

import keras
import tensorflow as tf

NORMALIZATIONS = ("none", "batch", "group")
ACTIVATIONS = ("leaky_relu", "swish")
# The constructor arguments that define the architecture; a run's TrainConfig has fields of the
# same names (and a built WideResNet attributes), so `network_arguments` reads them from either.
ARCHITECTURE_FIELDS = ("depth", "width", "norm", "activation", "dropout_rate")
MIN_INPUT_SIZE = 8
# The reference code's LeakyReLU slope.
LEAKY_RELU_SLOPE = 0.2


# Bumped whenever a change to the network makes older checkpoints compute something else with the
# same variable names and shapes (so a restore would succeed silently). 2: stride-2 3x3 convolutions
# pad (1, 1) like the reference's PyTorch `padding=1` instead of Keras "same"'s (0, 1) (issue #11).
NETWORK_LAYOUT = 2
NETWORK_LAYOUT_CHANGES = {
    2: "stride-2 3x3 convolutions now pad 1 pixel on both sides like the reference's PyTorch padding=1 "
    "(Keras padding='same' padded 0 before and 1 after)",
}
# The checkpoint key under which training checkpoints record NETWORK_LAYOUT.
NETWORK_LAYOUT_KEY = "network_layout"


class IncompatibleCheckpointError(ValueError):
    """A checkpoint was written for an older network layout than this code builds."""


def check_checkpoint_layout(path: str) -> None:
    """Refuses a checkpoint written before the current NETWORK_LAYOUT.

    Its variables would restore without error (the names and shapes did not change) but the network
    would compute different logits, so this check is the only thing standing between an old
    checkpoint and silently wrong results.
    """
    reader = tf.train.load_checkpoint(path)
    key = f"{NETWORK_LAYOUT_KEY}/.ATTRIBUTES/VARIABLE_VALUE"
    recorded = int(reader.get_tensor(key)) if reader.has_tensor(key) else 1
    if recorded != NETWORK_LAYOUT:
        changes = "; ".join(text for version, text in sorted(NETWORK_LAYOUT_CHANGES.items()) if version > recorded)
        raise IncompatibleCheckpointError(
            f"Checkpoint {path!r} was written with WideResNet network layout {recorded}, but this jem_tf "
            f"builds layout {NETWORK_LAYOUT}: {changes or 'a newer layout than this code knows'}. Its weights "
            "would load but compute different outputs, so it is refused. Retrain the run with this version "
            "(or use the jem_tf version that wrote it)."
        )


def _torch_default_kernel_initializer():
    # PyTorch's default for nn.Conv2d and nn.Linear weights, kaiming_uniform(a=sqrt(5)), is
    # U(+-1/sqrt(fan_in)); the reference never re-initialises its layers.
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def _torch_default_bias_initializer(fan_in):
    # PyTorch's default bias for nn.Conv2d and nn.Linear: U(+-1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


class _Conv2D(keras.layers.Conv2D):
    """Conv2D initialised like PyTorch's nn.Conv2d: the bias bound needs the input channel count,
    which is only known in build()."""

    def build(self, input_shape):
        self.bias_initializer = _torch_default_bias_initializer(math.prod(self.kernel_size) * input_shape[-1])
        super().build(input_shape)


def _conv(filters, kernel_size, strides=1, name=None, dtype=None):
    # Strided convolutions are "valid": the reference pads 3x3 stride-2 convolutions (1, 1), which
    # Keras "same" does not (it pads (0, 1)), so the caller pads explicitly; a 1x1 stride-2
    # convolution needs no padding in either framework.
    return _Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same" if strides == 1 else "valid",
        use_bias=True,
        kernel_initializer=_torch_default_kernel_initializer(),
        name=name,
        dtype=dtype,
    )


def _norm(kind, channels, name, dtype=None):
    if kind == "none":
        return None
    if kind == "batch":
        # PyTorch's BatchNorm2d(momentum=0.9) as in the reference: the running statistics keep 10 % of
        # their old value (Keras counts momentum the other way round), and epsilon is PyTorch's 1e-5.
        return keras.layers.BatchNormalization(momentum=0.1, epsilon=1e-5, name=name, dtype=dtype)
    return keras.layers.GroupNormalization(groups=math.gcd(channels, 32), name=name, dtype=dtype)


def _activation(kind, dtype=None):
    if kind == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE, dtype=dtype)
    return keras.layers.Activation("swish", dtype=dtype)


class WideBasicBlock(keras.layers.Layer):
    """norm -> act -> conv3x3 -> dropout -> norm -> act -> conv3x3(stride), plus a shortcut."""

    def __init__(self, filters, strides, norm, activation, dropout_rate, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        dtype = self.dtype_policy  # Keras does not hand a layer's policy down to its sublayers
        self.norm1 = None  # created in build(): group norm's group count depends on the input channels
        self.act1 = _activation(activation, dtype)
        self.conv1 = _conv(filters, 3, name="conv1", dtype=dtype)
        self.dropout = keras.layers.Dropout(dropout_rate, dtype=dtype) if dropout_rate > 0 else None
        self.norm2 = _norm(norm, filters, "norm2", dtype)
        self.act2 = _activation(activation, dtype)
        # PyTorch's padding=1 on both sides; "same" would pad (0, 1) at stride 2.
        self.pad2 = keras.layers.ZeroPadding2D(1, dtype=dtype) if strides != 1 else None
        self.conv2 = _conv(filters, 3, strides=strides, name="conv2", dtype=dtype)
        self._norm_kind = norm
        self.shortcut = None

    def build(self, input_shape):
        in_channels = input_shape[-1]
        self.norm1 = _norm(self._norm_kind, in_channels, "norm1", self.dtype_policy)
        if self.strides != 1 or in_channels != self.filters:
            self.shortcut = _conv(self.filters, 1, strides=self.strides, name="shortcut", dtype=self.dtype_policy)

    def call(self, x, training=False):
        out = self.norm1(x, training=training) if self.norm1 is not None else x
        out = self.conv1(self.act1(out))
        if self.dropout is not None:
            out = self.dropout(out, training=training)
        if self.norm2 is not None:
            out = self.norm2(out, training=training)
        out = self.act2(out)
        if self.pad2 is not None:
            out = self.pad2(out)
        out = self.conv2(out)
        residual = self.shortcut(x) if self.shortcut is not None else x
        return out + residual


def network_arguments(source, num_classes: int, precision: str = None) -> dict:
    """WideResNet's constructor arguments: the architecture of `source` (a run's TrainConfig, or a
    built WideResNet), `num_classes` logits, and the dtype policy of `precision` (default: the
    config's `precision`, or the network's own policy). The one place a network is described from a
    config: the objectives' models (trainers/registry.py), the readers' network (jem_tf/workdir/restore.py)
    and the export copy (Classifier.to_wide_resnet) all build from it."""
    from jem_tf import precision as jem_precision  # noqa: PLC0415 (jem_tf.precision imports nothing of ours)

    if precision is None:
        precision = source.dtype_policy.name if isinstance(source, keras.Model) else source.precision
    return dict({name: getattr(source, name) for name in ARCHITECTURE_FIELDS}, num_classes=int(num_classes),
                dtype=jem_precision.dtype_policy(precision))


class WideResNet(keras.Model):
    """WRN-depth-width classifier returning logits f(x) of shape [batch, num_classes].

    Args:
      depth: 6n+4 (10, 16, 22, 28, ...).
      width: widening factor k; stages have 16k, 32k and 64k channels.
      num_classes: K, the number of logits.
      norm: 'none' (the paper), 'batch' or 'group'.
      activation: 'leaky_relu' (slope 0.2, the reference code) or 'swish'.
      dropout_rate: dropout between the two convolutions of each block, in [0, 1).
      dtype: Keras dtype policy (see `jem_tf.precision`): 'float32' (default), 'mixed_bfloat16' or
        'mixed_float16'. The blocks compute in its compute dtype; the pooling and the logits stay
        float32, as do all weights.
    """

    def __init__(
        self,
        depth=28,
        width=10,
        num_classes=10,
        norm="none",
        activation="leaky_relu",
        dropout_rate=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(
                f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...); received depth={depth!r}."
            )
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"WideResNet width must be a positive integer; received width={width!r}.")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2; received num_classes={num_classes!r}.")
        if norm not in NORMALIZATIONS:
            raise ValueError(f"norm must be one of {NORMALIZATIONS}; received norm={norm!r}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}; received activation={activation!r}.")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1); received dropout_rate={dropout_rate!r}.")
        self.depth = depth
        self.width = width
        self.num_classes = num_classes
        self.norm = norm
        self.activation = activation
        self.dropout_rate = dropout_rate

        blocks_per_stage = (depth - 4) // 6
        dtype = self.dtype_policy
        self.stem = _conv(16, 3, name="stem", dtype=dtype)
        # Blocks are named attributes, not a list: tf.train.Checkpoint does not follow Keras 3's
        # tracked lists, so listed blocks would be missing from checkpoints.
        self.block_names = []
        for stage, (filters, strides) in enumerate(((16 * width, 1), (32 * width, 2), (64 * width, 2))):
            for index in range(blocks_per_stage):
                name = f"stage{stage + 1}_block{index + 1}"
                block = WideBasicBlock(
                    filters, strides if index == 0 else 1, norm, activation, dropout_rate, name=name, dtype=dtype
                )
                setattr(self, name, block)
                self.block_names.append(name)
        self.final_norm = _norm(norm, 64 * width, "final_norm", dtype)
        self.final_act = _activation(activation, dtype)
        # float32 from the pooling on: the logits are the energy, whatever the blocks compute in.
        self.pool = keras.layers.GlobalAveragePooling2D(dtype="float32")
        self.classifier = keras.layers.Dense(
            num_classes,
            kernel_initializer=_torch_default_kernel_initializer(),
            bias_initializer=_torch_default_bias_initializer(64 * width),
            name="logits",
            dtype="float32",
        )

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"WideResNet expects images [batch, H, W, C]; received shape {tuple(input_shape)}.")
        height, width, channels = input_shape[1], input_shape[2], input_shape[3]
        if (height is not None and height < MIN_INPUT_SIZE) or (width is not None and width < MIN_INPUT_SIZE):
            raise ValueError(
                f"WideResNet needs images of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}; received {height}x{width}."
            )
        if channels is None:
            raise ValueError("WideResNet needs a known channel count; received None.")
        self.input_image_shape = (height, width, channels)
        # Calling the network once on one blank image creates every sublayer's weights now (in call
        # order, as a symbolic call would), so weights can be set or restored before the first real
        # batch. Built eagerly (as every network here is), it takes half the time of a symbolic
        # call, which traces every op into a graph it then discards; a network is built for every
        # run, export and evaluation.
        self.call(tf.zeros((1, height, width, channels)), training=False)
        super().build(input_shape)

    def call(self, images, training=False):
        out = self.stem(images)
        for name in self.block_names:
            out = getattr(self, name)(out, training=training)
        if self.final_norm is not None:
            out = self.final_norm(out, training=training)
        out = self.pool(self.final_act(out))
        return self.classifier(out)

    def get_config(self):
        config = super().get_config()
        config.update(
            depth=self.depth,
            width=self.width,
            num_classes=self.num_classes,
            norm=self.norm,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
        )
        return config
