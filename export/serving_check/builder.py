"""Compiles `serving_check.cc` against the TensorFlow pip wheel into a per-user cache
(`$JEM_TF_SERVING_CHECK_CACHE`, else `$XDG_CACHE_HOME/jem_tf/serving_check/` or
`~/.cache/jem_tf/serving_check/`, folders of mode 0700), keyed by source and toolchain. A cached
binary runs only if it, its folder and the cache folder belong to the current user and are
writable by no one else (`check_binary`)."""

import hashlib
import os
import shutil
import stat
import subprocess

import tensorflow as tf
from absl import logging

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serving_check.cc")
CACHE_ENV = "JEM_TF_SERVING_CHECK_CACHE"


class CompilerNotFoundError(RuntimeError):
    """No C++ compiler on this machine."""


class UnsafeBinaryError(RuntimeError):
    """A cached checker binary (or its folder) that another user could have planted or changed."""


def default_cache_dir() -> str:
    """The per-user build cache: $XDG_CACHE_HOME/jem_tf/serving_check, else ~/.cache/jem_tf/...

    Never a fixed path under the shared temporary directory: anyone can create that path first and
    leave a program there for us to run.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jem_tf", "serving_check")


def check_private(path: str) -> None:
    """Raises UnsafeBinaryError unless `path` is not a symbolic link, belongs to the current user
    and is writable by neither its group nor others."""
    try:
        info = os.lstat(path)
    except FileNotFoundError as error:
        raise UnsafeBinaryError(f"{path!r} does not exist.") from error
    problems = []
    if stat.S_ISLNK(info.st_mode):
        problems.append("is a symbolic link")
    if info.st_uid != os.geteuid():
        problems.append(f"belongs to uid {info.st_uid}, not to the current user (uid {os.geteuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append(f"is writable by its group or by others (mode {stat.S_IMODE(info.st_mode):04o})")
    if problems:
        raise UnsafeBinaryError(
            f"Refusing to run the serving check from {path!r}: it {' and '.join(problems)}, so someone else may "
            f"have put or changed the program there. Remove it, or set ${CACHE_ENV} to a folder only you can "
            "write, and run again (the checker is then rebuilt)."
        )


def check_binary(binary: str) -> None:
    """Raises UnsafeBinaryError unless the binary, its folder and that folder's parent (the cache)
    are private to the current user (see `check_private`)."""
    directory = os.path.dirname(os.path.abspath(binary))
    for path in (os.path.dirname(directory), directory, binary):
        check_private(path)


def find_compiler() -> str | None:
    """$CXX, else the first of c++, g++, clang++ on PATH."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for candidate in candidates:
        path = shutil.which(candidate)
        if path:
            return path
    return None


def compile_command(compiler: str, output: str) -> list:
    """The build line: TensorFlow's own compile flags, and both TF libraries linked with
    --no-as-needed. Without it the linker drops libtensorflow_cc's reference-free registrations
    and loading fails with "No session factory registered"."""
    lib_dir = tf.sysconfig.get_lib()
    return [
        compiler, "-O1", "-w", *tf.sysconfig.get_compile_flags(), SOURCE, "-o", output,
        f"-L{lib_dir}", "-Wl,--no-as-needed", "-l:libtensorflow_cc.so.2", "-l:libtensorflow_framework.so.2",
        f"-Wl,-rpath,{lib_dir}",
    ]


def _find_compiler_or_raise() -> str:
    compiler = find_compiler()
    if compiler is None:
        raise CompilerNotFoundError("No C++ compiler found (tried $CXX, c++, g++, clang++); install g++ to build "
                                    "the TF Serving check.")
    return compiler


def binary_path(cache_dir: str | None = None, compiler: str | None = None) -> str:
    """Where `build` keeps the checker for this source and toolchain (it may not exist yet)."""
    compiler = compiler or _find_compiler_or_raise()
    cache_dir = cache_dir or os.environ.get(CACHE_ENV) or default_cache_dir()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256()
    with open(SOURCE, "rb") as f:
        key.update(f.read())
    for part in (compiler, version, tf.__version__, tf.sysconfig.get_lib(), *tf.sysconfig.get_compile_flags()):
        key.update(part.encode())
    return os.path.join(cache_dir, key.hexdigest()[:16], "serving_check")


def build(cache_dir: str | None = None) -> str:
    """Compiles the checker if no cached binary matches the source and toolchain; returns its path.

    The cache folders are created with mode 0700, and a binary is returned only if `check_binary`
    finds it private to the current user (UnsafeBinaryError otherwise). Safe to call from
    concurrent processes: each compiles to a private name, then renames.
    """
    compiler = _find_compiler_or_raise()
    binary = binary_path(cache_dir, compiler)
    directory = os.path.dirname(binary)
    if os.path.lexists(binary):
        check_binary(binary)
        if os.access(binary, os.X_OK):
            return binary
    os.makedirs(os.path.dirname(directory), mode=0o700, exist_ok=True)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # makedirs leaves existing folders as they are: check them before writing into them.
    check_private(os.path.dirname(directory))
    check_private(directory)
    private = f"{binary}.tmp-{os.getpid()}"
    logging.info("Compiling %s against TensorFlow %s (once; about 15 s on 2 cores).", SOURCE, tf.__version__)
    result = subprocess.run(compile_command(compiler, private), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Compiling the serving check failed:\n{result.stderr[-6000:]}")
    os.replace(private, binary)
    check_binary(binary)
    return binary
