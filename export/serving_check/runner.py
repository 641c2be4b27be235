"""Runs the compiled checker on written requests (its address space capped when asked: the bad
inputs include decoding bombs), reads its responses, and the `python -m export.serving_check`
command (see the package docstring)."""

import os
import subprocess
import sys
import tempfile

from absl import logging

from export import client
from export.serving_check.builder import CompilerNotFoundError, UnsafeBinaryError, build, check_binary
from export.serving_check.request_cases import bad_input_cases_for_export, format_cases, valid_cases, write_cases


def read_response(request_path: str):
    """The PredictResponse the checker wrote for a request, as {output key: numpy array}."""
    from tensorflow_serving.apis import predict_pb2  # noqa: PLC0415

    with open(request_path + ".response", "rb") as f:
        return client.response_to_numpy(predict_pb2.PredictResponse.FromString(f.read()))


# Sets RLIMIT_AS on itself, then becomes the command: rlimits survive exec.
_LIMIT_THEN_EXEC = ("import os, resource, sys; limit = int(sys.argv[1]); "
                    "resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); os.execvp(sys.argv[2], sys.argv[2:])")


def memory_limited(command, limit_bytes: int | None) -> list:
    """`command` with its address space (RLIMIT_AS) capped at `limit_bytes` (None: no cap), so that
    a decoding bomb fails the child instead of exhausting the machine.

    The cap is set by a small Python (standard library only) that then execs the command, not by a
    `preexec_fn`: with one, subprocess must fork() this process and run the fork handlers of what
    it has loaded. Forked so from a process whose TensorFlow had gRPC threads busy, a child once
    aborted before running its command (exit -6, gRPC's "epoll_wait error: Bad file descriptor").
    Without a preexec_fn, subprocess starts the child by vfork/posix_spawn, which runs no handlers."""
    if limit_bytes is None:
        return list(command)
    return [sys.executable, "-I", "-S", "-c", _LIMIT_THEN_EXEC, str(int(limit_bytes)), *command]


def run(binary: str, export_dir: str, request_paths, timeout_s: float = 600,
        memory_limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    """Runs the checker (after `check_binary`); TensorFlow's C++ logging is quietened to warnings.
    `memory_limit_bytes` caps its address space (see `memory_limited`)."""
    check_binary(binary)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1"))
    return subprocess.run(memory_limited([binary, export_dir, *request_paths], memory_limit_bytes),
                          capture_output=True, text=True, timeout=timeout_s, env=env)


def check_export(export_dir: str, work_dir: str, bad_inputs: bool = True, batch_sizes=(1, 3), extra_cases=(),
                 memory_limit_bytes: int | None = None):
    """Builds the checker and runs every signature, every image format, the bad inputs and
    `extra_cases` against `export_dir`, in one run of the checker (its address space capped at
    `memory_limit_bytes`, e.g. in tests: the bad inputs include decoding bombs).

    Returns (completed process, cases, request paths).
    """
    from export import archive  # noqa: PLC0415 (archive imports Keras; this module need not)

    signature_defs = client.signature_defs_from_export(export_dir)
    metadata = archive.read_metadata(export_dir)
    image_shape = tuple(metadata["image_shape"])
    cases = valid_cases(signature_defs, image_shape, batch_sizes) + format_cases(image_shape)
    for case in cases:
        client.check_request(case.request, signature_defs)
    if bad_inputs:
        cases += bad_input_cases_for_export(export_dir)
    cases += list(extra_cases)
    paths = write_cases(cases, work_dir)
    return run(build(), export_dir, paths, memory_limit_bytes=memory_limit_bytes), cases, paths


def main(argv):
    """Exit codes: the checker's (0 everything served); 2 a refusal with one message and no
    traceback: no SavedModel at --export_dir, no compiler, or a cached binary that is not private."""
    from absl import flags  # noqa: PLC0415

    from jem_tf import cli  # noqa: PLC0415

    flag_values = flags.FLAGS
    if len(argv) > 1:
        raise cli.UsageError(f"Unexpected arguments {argv[1:]}: every setting is a --flag=value.")
    export_dir = flag_values.export_dir
    if not os.path.isfile(os.path.join(export_dir or "", "saved_model.pb")):
        logging.error("--export_dir=%r holds no saved_model.pb; pass an export version directory (OUTPUT/<version>, "
                      "written by `python -m export.savedmodel`).", export_dir)
        sys.exit(cli.EXIT_BAD_INPUT)
    try:
        build()  # an unsafe cached binary or no compiler is refused before the export is read
        with tempfile.TemporaryDirectory(prefix="serving_check_") as work_dir:
            result, _, _ = check_export(export_dir, work_dir, bad_inputs=flag_values.bad_inputs)
    except (UnsafeBinaryError, CompilerNotFoundError) as error:
        logging.error("%s", error)
        sys.exit(cli.EXIT_BAD_INPUT)
    sys.stderr.write(result.stderr[-4000:] if result.returncode else "")
    print(result.stdout, end="")
    sys.exit(result.returncode)
