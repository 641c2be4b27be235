"""A run directory's file names and the I/O of its small run files: config.json, run_info.json,
run_status.json, and the clean-up of what killed processes left half-written (see the package
docstring for the layout)."""

import json
import os
import re
import shutil
import socket
import time

from absl import logging

from jem_tf.configs.base import TrainConfig, write_json_atomically

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run_info.json"
RUN_STATUS_FILE = "run_status.json"
RECOVERIES_FILE = "recoveries.json"
METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "export"

def is_workdir(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, CONFIG_FILE)) and os.path.isfile(os.path.join(workdir, RUN_INFO_FILE))


def load_config(workdir: str) -> TrainConfig:
    _require_workdir(workdir)
    return TrainConfig.load(os.path.join(workdir, CONFIG_FILE))


def load_run_info(workdir: str) -> dict:
    _require_workdir(workdir)
    with open(os.path.join(workdir, RUN_INFO_FILE)) as f:
        return json.load(f)


def write_config(workdir: str, config: TrainConfig) -> None:
    write_json_atomically(os.path.join(workdir, CONFIG_FILE), config.to_json())


def write_run_info(workdir: str, run_info: dict) -> None:
    write_json_atomically(os.path.join(workdir, RUN_INFO_FILE), json.dumps(run_info, indent=2))


def _require_workdir(workdir: str) -> None:
    if not str(workdir or "").strip():
        raise FileNotFoundError(f"--workdir={workdir!r} is empty; pass a training workdir (the --workdir of "
                                "`python -m jem_tf.train`), e.g. --workdir=runs/quick.")
    if not is_workdir(workdir):
        raise FileNotFoundError(
            f"{workdir!r} is not a jem_tf training workdir: expected {CONFIG_FILE} and {RUN_INFO_FILE} in it "
            "(written by `python -m jem_tf.train --workdir=...`)."
        )


def write_run_status(workdir: str, state: str, step: int, **details) -> None:
    """WORKDIR/run_status.json: {"state", "step", "pid", "host", "time", ...details}. Never raises
    for a full disk: the status is informative, the checkpoint is what a resume needs."""
    status = dict(state=state, step=int(step), pid=os.getpid(), host=socket.gethostname(),
                  time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **details)
    try:
        write_json_atomically(os.path.join(workdir, RUN_STATUS_FILE), json.dumps(status, indent=2))
    except OSError as error:
        logging.warning("Could not write %s (%s).", RUN_STATUS_FILE, error)


def read_json(path: str, default):
    """A JSON file's content, or `default` when it is absent."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def clean_leftovers(workdir: str) -> list:
    """Removes what killed processes left half-written: TF's `*_temp*` checkpoint staging folders,
    `*.tmp-PID` files of atomic JSON writes, and export `.staging-*` / `.retired-*` folders of
    processes that no longer run. Call only while holding the workdir lock. Returns the paths."""
    removed = []
    checkpoints = os.path.join(workdir, CHECKPOINT_DIR)
    if os.path.isdir(checkpoints):
        for name in os.listdir(checkpoints):
            if "_temp" in name:
                removed.append(os.path.join(checkpoints, name))
    for name in os.listdir(workdir) if os.path.isdir(workdir) else ():
        match = re.search(r"\.tmp-(\d+)$", name)
        if match and not _process_alive(int(match.group(1))):
            removed.append(os.path.join(workdir, name))
    export = os.path.join(workdir, EXPORT_DIR)
    if os.path.isdir(export):
        for name in os.listdir(export):
            match = re.match(r"^\.(staging|retired)-.*-(\d+)$", name)
            if match and not _process_alive(int(match.group(2))):
                removed.append(os.path.join(export, name))
    for path in removed:
        logging.warning("Removing %s, left half-written by a killed run.", path)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

