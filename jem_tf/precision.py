"""Numeric precision of the network: float32, or mixed bfloat16 / float16 with float32 weights.

A mixed policy runs the convolutions in 16 bits and keeps every variable in float32. What JEM
reads as a density stays float32 whatever the policy: the network's pooling and final Dense layer
run in float32 (so the logits, their logsumexp and the energies are float32), and the images, the
SGLD updates and the replay buffer never leave float32 (the network casts its input to its compute
dtype itself). The policy is passed to each layer (`WideResNet(dtype=...)`), never set globally,
so several models of different precision can live in one process.

float16 has a narrow exponent range, so two gradients need scaling:
  - weight gradients in training: `keras.optimizers.LossScaleOptimizer` (dynamic loss scaling);
  - the SGLD score d log p~(x)/dx: backpropagated through float16 layers, its intermediate values
    underflow (float16's smallest normal number is 6.1e-5). `input_gradient_scale` gives the
    factor by which the log density is multiplied before differentiating and the score divided
    after (`energy.log_density_and_score(..., gradient_scale=...)`). bfloat16 has float32's
    exponent range and needs neither.
"""

import keras

FLOAT32 = "float32"
MIXED_BFLOAT16 = "mixed_bfloat16"
MIXED_FLOAT16 = "mixed_float16"
PRECISIONS = (FLOAT32, MIXED_BFLOAT16, MIXED_FLOAT16)

# A power of two, so scaling and unscaling are exact. d log p~(x)/d logits is a softmax (entries
# in [0, 1]); x 2^10 keeps the backward pass of a WRN well inside float16's range (max 65504)
# while lifting it off the underflow threshold (tests/test_precision.py measures both sides).
FLOAT16_INPUT_GRADIENT_SCALE = 2.0**10


# CPU flags (/proc/cpuinfo) of instructions that compute in bfloat16 (x86: AVX512-BF16, AMX; Arm:
# BF16). Without them oneDNN emulates bfloat16 through float32 conversions: slower than float32.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> set | None:
    """The first CPU's flags (x86 'flags', Arm 'Features'), or None when the file cannot be read."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        return None
    return None


def validate(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision={precision!r} is invalid: expected one of {PRECISIONS}.")
    return precision


def dtype_policy(precision: str) -> keras.DTypePolicy:
    """The Keras dtype policy of the network's 16-bit-capable layers for `precision`."""
    return keras.DTypePolicy(validate(precision))


def precision_of(model) -> str:
    """The precision name of a built network (its dtype policy's name)."""
    name = model.dtype_policy.name
    return name if name in PRECISIONS else FLOAT32


def input_gradient_scale(model) -> float:
    """The factor the SGLD score of `model` is computed with (1 unless it computes in float16)."""
    return FLOAT16_INPUT_GRADIENT_SCALE if model.compute_dtype == "float16" else 1.0


def make_optimizer(optimizer, precision: str):
    """`optimizer`, wrapped for dynamic loss scaling when `precision` is mixed_float16."""
    if validate(precision) != MIXED_FLOAT16:
        return optimizer
    return StepCountingLossScaleOptimizer(optimizer)


class StepCountingLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """A LossScaleOptimizer whose skipped steps still count as steps.

    Keras skips the update when a scaled gradient overflows and leaves `iterations` unchanged. Our
    loop uses `iterations` as the global step: it names checkpoints, seeds each step's random
    numbers, places a resumed run in its epoch and drives the learning-rate schedule. A skipped
    step has consumed its batch, so it counts; otherwise a resumed run would replay batches.
    """

    def _stateful_handle_non_finite_grads(self):
        super()._stateful_handle_non_finite_grads()
        self.inner_optimizer.iterations.assign_add(1)


__all__ = [
    "PRECISIONS", "FLOAT32", "MIXED_BFLOAT16", "MIXED_FLOAT16", "FLOAT16_INPUT_GRADIENT_SCALE", "BFLOAT16_CPU_FLAGS",
    "cpu_flags", "validate",
    "dtype_policy", "precision_of", "input_gradient_scale", "make_optimizer", "StepCountingLossScaleOptimizer",
]
