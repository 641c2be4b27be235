"""Builds and runs `serving_check.cc`: an export served by TensorFlow Serving's C++ path.

    python -m export.serving_check --export_dir=EXPORT/1 [--bad_inputs]

compiles the checker against the TensorFlow pip wheel (once; cached by source and toolchain in a
per-user cache, `$XDG_CACHE_HOME/jem_tf/serving_check/` or `~/.cache/jem_tf/serving_check/`, made
with mode 0700; a cached binary runs only if it, its folder and the cache folder belong to the
current user and are writable by no one else), writes PredictRequests for every signature at two
batch sizes and `classify_image_bytes` requests in every advertised image format with
`export.client`, and has the C++ program load the export with `tensorflow::LoadSavedModel` and
answer them all in one run, as TF Serving's Predict handler would. With --bad_inputs it also
sends every malformed request the signatures must refuse (with the limits in the export's
metadata: batch size, step size, noise, image size) and checks each is refused with
INVALID_ARGUMENT and the expected message. Exits with the checker's status (0: everything served),
or 2 with one message for a refusal (no SavedModel at --export_dir, no compiler, an unsafe binary).

One module per job; this package's own namespace is empty:

    export.serving_check.builder        the compiler, the private binary cache and its checks, compiling
    export.serving_check.request_cases  the requests: valid ones per signature and image format, bad inputs
    export.serving_check.runner         running the checker on written requests, reading its responses
"""
