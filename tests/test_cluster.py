"""TF_CONFIG checks for --strategy=multi_worker (jem_tf/cluster.py): the chief, and a clear refusal
for every way the variable can be missing or wrong (without it TensorFlow would silently train as
one local worker)."""

import json

import pytest

from jem_tf import cluster as cluster_lib


def _env(spec):
    return {cluster_lib.ENV_VAR: spec if isinstance(spec, str) else json.dumps(spec)}


WORKERS = {"worker": ["host0:2222", "host1:2222", "host2:2222"]}


@pytest.mark.parametrize("task, is_chief", [({"type": "worker", "index": 0}, True),
                                            ({"type": "worker", "index": 2}, False)])
def test_worker_zero_is_the_chief_without_a_chief_job(task, is_chief):
    parsed = cluster_lib.parse_tf_config(_env({"cluster": WORKERS, "task": task}))
    assert (parsed.task_type, parsed.task_index, parsed.num_workers) == (task["type"], task["index"], 3)
    assert parsed.is_chief == is_chief


def test_the_chief_job_is_the_chief_and_counts_as_a_worker():
    cluster = dict(WORKERS, chief=["head:2222"])
    assert cluster_lib.parse_tf_config(_env({"cluster": cluster, "task": {"type": "chief", "index": 0}})).is_chief
    worker0 = cluster_lib.parse_tf_config(_env({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert not worker0.is_chief
    assert worker0.num_workers == 4


@pytest.mark.parametrize("spec, message", [
    (None, "TF_CONFIG is not set"),
    ("", "TF_CONFIG is not set"),
    ("{cluster", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ({"task": {"type": "worker", "index": 0}}, "no \"cluster\""),
    ({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}, "non-empty list"),
    ({"cluster": {"worker": ["host0"]}, "task": {"type": "worker", "index": 0}}, "host:port"),
    ({"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}}, "no \"worker\""),
    ({"cluster": dict(WORKERS, chief=["a:1", "b:1"]), "task": {"type": "chief", "index": 0}}, "exactly one"),
    ({"cluster": WORKERS}, "no \"task\""),
    ({"cluster": dict(WORKERS, evaluator=["e:1"]), "task": {"type": "evaluator", "index": 0}}, "does not train"),
    ({"cluster": WORKERS, "task": {"type": "chief", "index": 0}}, "not a job of the cluster"),
    ({"cluster": WORKERS, "task": {"type": "worker", "index": 3}}, "task index 3 is not in 0..2"),
    ({"cluster": WORKERS, "task": {"type": "worker", "index": "1"}}, "task index '1'"),
])
def test_a_missing_or_invalid_tf_config_is_refused_with_the_fix(spec, message):
    environ = {} if spec is None else _env(spec)
    with pytest.raises(ValueError) as error:
        cluster_lib.parse_tf_config(environ)
    assert message in str(error.value)
    assert "--strategy=multi_worker" in str(error.value) and "TF_CONFIG='" in str(error.value)  # says the fix
