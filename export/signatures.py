"""The serving contract: signature names, input and output keys, dtypes and value rules.

Everything a client of an exported jem_tf model may rely on is named here, once. The exporter
builds its SignatureDefs from these constants, the client (`export.client`) builds its requests
from them, and the tests compare both against the SignatureDefs actually written. Changing a
value here changes the serving API: bump `CONTRACT_VERSION` when you do.

Images travel as float32 `[batch, H, W, C]` in the model range [-1, 1], i.e. uint8 pixels mapped
by `x / 127.5 - 1` (`jem_tf.data.to_model_range`), the preprocessing the model was trained with.
"""

import dataclasses

# Recorded in the export's metadata so a client can tell which contract a model speaks.
# 2: refine_then_classify bounds step_size and noise_std and refuses non-finite results; every
# signature caps the batch; classify_image_bytes checks the encoded size before decoding and takes
# BMP and GIF on 1-channel models.
# 3: classify_image_bytes decodes only the formats below (by magic bytes) and bounds each image's
# and the request's bytes; refine_then_classify keeps the chain in [-1, 1].
CONTRACT_VERSION = 3

# The MetaGraph tag TF Serving and `saved_model_cli` load.
SERVE_TAG = "serve"
# TF Serving's name for the signature used when a request names none.
DEFAULT_SIGNATURE = "serving_default"

# Signature names.
CLASSIFY = "classify"
ENERGY = "energy"
REFINE_THEN_CLASSIFY = "refine_then_classify"
CLASSIFY_IMAGE_BYTES = "classify_image_bytes"

# Input keys.
IMAGES = "images"
IMAGE_BYTES = "image_bytes"
STEPS = "steps"
STEP_SIZE = "step_size"
NOISE_STD = "noise_std"
SEED = "seed"

# Output keys of the classify family (classify, classify_image_bytes, refine_then_classify).
LOGITS = "logits"
PROBABILITIES = "probabilities"
CLASS_ID = "class_id"
LOG_PX = "log_px"
IS_OUT_OF_DISTRIBUTION = "is_out_of_distribution"
# Output keys of `energy`.
ENERGY_OUTPUT = "energy"
CLASS_ENERGIES = "class_energies"
SCORE_GRAD_NORM = "score_grad_norm"
# Extra output of `refine_then_classify`.
REFINED_IMAGES = "refined_images"

# Input value rules enforced inside every signature (violations fail with INVALID_ARGUMENT).
IMAGE_MIN = -1.0
IMAGE_MAX = 1.0
# Values up to this far outside [-1, 1] are float rounding from a client's own scaling; they are
# accepted and clipped to [-1, 1]. Anything further out is refused rather than silently clipped,
# because it almost always means the client skipped or doubled the scaling (e.g. sent 0..255).
IMAGE_RANGE_TOLERANCE = 1e-3
# `steps` must lie in [0, max_refine_steps]; the bound is fixed at export (this is its default),
# so one request cannot occupy a server for an unbounded time.
DEFAULT_MAX_REFINE_STEPS = 100
# Upper bounds of `step_size` and `noise_std`, fixed at export (these are the defaults): 10x the
# paper's step size 1, and a noise std of half the image range (the paper: 0.01). Far larger
# values only overflow -- step_size=3.4e38 gave NaN logits, 1e30 images of +-8e28 -- so they are
# refused instead of answered.
DEFAULT_MAX_STEP_SIZE = 10.0
DEFAULT_MAX_NOISE_STD = 1.0
# Most images (or encoded images) one request may carry, fixed at export (this is the default):
# 1024 images of 32x32x3 float32 are 12 MB; a larger batch is refused before any work is done.
DEFAULT_MAX_BATCH_SIZE = 1024
# Formats `classify_image_bytes` decodes (on models of any channel count). The height and width
# stated in each image's header must be the model's H x W; that is checked on the header bytes,
# before anything is decoded, so an oversized image costs no decoding memory.
# Any other format (e.g. WebP, which TensorFlow would decode) is refused before decoding.
IMAGE_BYTES_FORMATS = ("PNG", "JPEG", "BMP", "GIF")
# Most bytes one encoded image may have, fixed at export (this is the default). The header check
# bounds the decoded size, not the work: a PNG whose IHDR says 8x8 inflated 400 MB of zlib stream
# (0.9 s of CPU). Deflate expands at most about 1032x, so 64 KiB costs at most about 66 MB of
# inflating; an honest 32x32 RGB PNG or BMP is about 3 KB.
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024
# Most bytes all encoded images of one request may have together, fixed at export (the default
# is gRPC's default message size): 1024 honest 32x32 RGB PNGs fit.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024

# Metadata written next to the SavedModel. TF Serving ignores `assets.extra/`.
METADATA_DIR = "assets.extra"
METADATA_FILE = "jem_metadata.json"


@dataclasses.dataclass(frozen=True)
class TensorContract:
    """One input or output: its key, dtype name (as in `tf.dtypes.as_dtype`) and shape, where
    'batch' is the dynamic batch dimension and 'H', 'W', 'C', 'K' are fixed at export (image
    height, width, channels and the number of classes)."""

    key: str
    dtype: str
    shape: tuple
    description: str


def _images_input(description="Images in [-1, 1] (uint8 pixels as x / 127.5 - 1)."):
    return TensorContract(IMAGES, "float32", ("batch", "H", "W", "C"), description)


# The classify outputs; IS_OUT_OF_DISTRIBUTION is present only when an OOD threshold was baked in.
_CLASSIFY_OUTPUTS = (
    TensorContract(LOGITS, "float32", ("batch", "K"), "f(x), the classifier's logits."),
    TensorContract(PROBABILITIES, "float32", ("batch", "K"), "p(y | x) = softmax(f(x))."),
    TensorContract(CLASS_ID, "int32", ("batch",), "argmax_y p(y | x)."),
    TensorContract(LOG_PX, "float32", ("batch",), "log p~(x) = logsumexp_y f(x)[y] (unnormalised)."),
)
_OOD_OUTPUT = TensorContract(
    IS_OUT_OF_DISTRIBUTION, "bool", ("batch",),
    "log_px < the export's OOD threshold (only when the export has one).",
)


@dataclasses.dataclass(frozen=True)
class SignatureContract:
    """A signature's name, inputs and outputs (outputs without the optional OOD flag)."""

    name: str
    inputs: tuple
    outputs: tuple
    description: str

    def output_keys(self, with_ood: bool) -> tuple:
        """The output keys the export has, given whether it has an OOD threshold."""
        keys = tuple(output.key for output in self.outputs)
        if with_ood and LOG_PX in keys:
            keys += (IS_OUT_OF_DISTRIBUTION,)
        return keys

    def input(self, key: str) -> TensorContract:
        return next(item for item in self.inputs if item.key == key)


SIGNATURES = {
    CLASSIFY: SignatureContract(
        CLASSIFY,
        (_images_input(),),
        _CLASSIFY_OUTPUTS,
        "Classify images; also exported as serving_default.",
    ),
    ENERGY: SignatureContract(
        ENERGY,
        (_images_input(),),
        (
            TensorContract(ENERGY_OUTPUT, "float32", ("batch",), "E(x) = -logsumexp_y f(x)[y]."),
            TensorContract(CLASS_ENERGIES, "float32", ("batch", "K"), "E(x, y) = -f(x)[y]."),
            TensorContract(
                SCORE_GRAD_NORM, "float32", ("batch",),
                "||d log p~(x) / dx||_2; the paper's eq. 9 OOD score is its negative.",
            ),
        ),
        "Energies and the approximate-mass score of images.",
    ),
    REFINE_THEN_CLASSIFY: SignatureContract(
        REFINE_THEN_CLASSIFY,
        (
            _images_input("Images in [-1, 1], the SGLD chain starts."),
            TensorContract(STEPS, "int32", (), "SGLD steps, 0..max_refine_steps (0: plain classify)."),
            TensorContract(STEP_SIZE, "float32", (), "SGLD step size alpha, 0..max_step_size (the paper: 1)."),
            TensorContract(NOISE_STD, "float32", (), "SGLD noise std sigma, 0..max_noise_std (the paper: 0.01)."),
            TensorContract(SEED, "int64", (2,), "Stateless seed of the SGLD noise."),
        ),
        (TensorContract(REFINED_IMAGES, "float32", ("batch", "H", "W", "C"),
                        "The refined images, in [-1, 1] (the chain is clipped to it after every step)."),)
        + _CLASSIFY_OUTPUTS,
        "SGLD on log p~(x) seeded at the input (paper section 5.4), then classify the refined images.",
    ),
    CLASSIFY_IMAGE_BYTES: SignatureContract(
        CLASSIFY_IMAGE_BYTES,
        (TensorContract(IMAGE_BYTES, "string", ("batch",),
                        "Encoded PNG, JPEG, BMP or GIF (first frame) images of size H x W."),),
        _CLASSIFY_OUTPUTS,
        "Decode, scale with x / 127.5 - 1 (the training preprocessing) and classify.",
    ),
}

# The order endpoints are added to the SavedModel; the first is also `serving_default`.
SIGNATURE_ORDER = (CLASSIFY, ENERGY, REFINE_THEN_CLASSIFY, CLASSIFY_IMAGE_BYTES)
# Every signature name in an export, aliases included.
ALL_SIGNATURE_NAMES = SIGNATURE_ORDER + (DEFAULT_SIGNATURE,)


def contract_for(signature_name: str) -> SignatureContract:
    """The contract of `signature_name`, resolving `serving_default` to `classify`."""
    if signature_name == DEFAULT_SIGNATURE:
        signature_name = SIGNATURE_ORDER[0]
    if signature_name not in SIGNATURES:
        raise ValueError(f"Unknown signature {signature_name!r}; the exports have {sorted(ALL_SIGNATURE_NAMES)}.")
    return SIGNATURES[signature_name]


def concrete_shape(shape: tuple, image_shape, num_classes: int) -> list:
    """A contract shape with H, W, C, K filled in and the batch dimension as None."""
    height, width, channels = image_shape
    sizes = {"batch": None, "H": height, "W": width, "C": channels, "K": num_classes}
    return [sizes.get(dim, dim) for dim in shape]


def describe(image_shape, num_classes: int, with_ood: bool) -> dict:
    """The contract as JSON-ready data for the export's metadata."""
    def tensor(item):
        return {"dtype": item.dtype, "shape": concrete_shape(item.shape, image_shape, num_classes),
                "description": item.description}

    described = {}
    for name in SIGNATURE_ORDER:
        contract = SIGNATURES[name]
        outputs = {item.key: tensor(item) for item in contract.outputs}
        if with_ood and LOG_PX in outputs:
            outputs[IS_OUT_OF_DISTRIBUTION] = tensor(_OOD_OUTPUT)
        described[name] = {
            "description": contract.description,
            "inputs": {item.key: tensor(item) for item in contract.inputs},
            "outputs": outputs,
        }
    described[DEFAULT_SIGNATURE] = {"alias_of": SIGNATURE_ORDER[0]}
    return described
