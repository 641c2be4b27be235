"""Multi-worker training's cluster description: TF_CONFIG, checked before anything starts.

`--strategy=multi_worker` runs tf.distribute.MultiWorkerMirroredStrategy, which reads the cluster
from the TF_CONFIG environment variable, e.g. on the second of two workers:

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 1}}'

Without a usable TF_CONFIG the strategy silently trains as one local worker, which would look like
multi-worker training while it is not; `parse_tf_config` refuses that with a message naming the fix.
Pure Python (no TensorFlow): it runs in the preflight, before TensorFlow starts.

The chief is the "chief" task if the cluster has one, else worker 0 (TensorFlow's convention). Only
the chief writes the run's files; the others write their checkpoint copies to a temporary directory.
"""

import dataclasses
import json
import os

ENV_VAR = "TF_CONFIG"
# MultiWorkerMirroredStrategy accepts these job names; "evaluator" runs no training step.
TRAINING_JOBS = ("chief", "worker")
_EXAMPLE = ('{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
            '"task": {"type": "worker", "index": 0}}')


@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """This process's place in the cluster."""

    task_type: str
    task_index: int
    num_workers: int  # training tasks: chief + workers
    has_chief_job: bool = False

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                             and not self.has_chief_job)


def _fail(problem: str) -> None:
    raise ValueError(
        f"--strategy=multi_worker needs the {ENV_VAR} environment variable describing the cluster and this "
        f"process's task: {problem}. Set it on every worker, e.g. {ENV_VAR}='{_EXAMPLE}' (index 0 on the first "
        "worker, 1 on the second, ...; docs/training.md, 'Multi-worker training'), or train on one machine with "
        "--strategy=auto."
    )


def parse_tf_config(environ=None) -> ClusterTask:
    """This process's task from TF_CONFIG; ValueError (naming the fix) when it is missing or invalid."""
    environ = os.environ if environ is None else environ
    raw = environ.get(ENV_VAR, "")
    if not raw.strip():
        _fail(f"{ENV_VAR} is not set")
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as error:
        _fail(f"{ENV_VAR}={raw!r} is not valid JSON ({error})")
    if not isinstance(spec, dict):
        _fail(f"{ENV_VAR}={raw!r} is not a JSON object")
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster:
        _fail(f"{ENV_VAR} has no \"cluster\" object mapping job names to address lists")
    for job, addresses in cluster.items():
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and ":" in a for a in addresses)):
            _fail(f"cluster job {job!r} must be a non-empty list of \"host:port\" strings; got {addresses!r}")
    if not any(job in cluster for job in TRAINING_JOBS):
        _fail(f"the cluster has no \"worker\" (or \"chief\") job; jobs given: {sorted(cluster)}")
    if "chief" in cluster and len(cluster["chief"]) != 1:
        _fail(f"the \"chief\" job must have exactly one address; got {cluster['chief']!r}")
    if not isinstance(task, dict):
        _fail(f"{ENV_VAR} has no \"task\" object ({{\"type\": \"worker\", \"index\": N}})")
    task_type, task_index = task.get("type"), task.get("index", 0)
    if task_type not in TRAINING_JOBS:
        _fail(f"task type {task_type!r} does not train; use \"worker\" (or \"chief\")")
    if task_type not in cluster:
        _fail(f"task type {task_type!r} is not a job of the cluster {sorted(cluster)}")
    if isinstance(task_index, bool) or not isinstance(task_index, int) or not 0 <= task_index < len(cluster[task_type]):
        _fail(f"task index {task_index!r} is not in 0..{len(cluster[task_type]) - 1} for job {task_type!r}")
    num_workers = sum(len(cluster.get(job, [])) for job in TRAINING_JOBS)
    return ClusterTask(task_type, task_index, num_workers, has_chief_job="chief" in cluster)
