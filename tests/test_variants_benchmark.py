"""benchmarks/variants.py: every documented flag set is a valid training command, finished runs are
reused, and the table shows what each run gave (n/a where an evaluation has no value)."""

import json
import os

from absl import flags

from benchmarks import variants
from jem_tf import train


def test_every_variant_flag_set_is_accepted_by_the_training_command():
    for variant in variants.VARIANTS:
        flag_values = flags.FlagValues()
        train.define_flags(flag_values)
        flag_values(["train", *variants.FLAGS["base_flags"].default, *variant.flags, "--workdir=/tmp/unused"])
        config = train.config_from_flags(flag_values)  # raises ValueError naming a bad flag
        assert config.workdir == "/tmp/unused", variant.name


def _finished_run(output_dir, name, results, step=240):
    workdir = os.path.join(output_dir, "runs", name)
    os.makedirs(os.path.join(workdir, "eval"))
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump({"global_step": step, "recoveries": 1}, f)
    with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
        json.dump(results, f)


def test_a_finished_run_is_reused_and_tabled(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(variants, "_run", lambda command, log: calls.append(command) or (0, 1.0))
    _finished_run(str(tmp_path), "jem", {"accuracy": 0.9612, "calibration/ece": 0.05,
                                         "ood/uniform/log_px/auroc": 1.0})
    row = variants.run_variant(variants.VARIANTS[1], str(tmp_path), ["--preset=quick"], [], rerun=False)
    assert calls == []  # nothing trained or evaluated again
    assert row["status"] == "ok" and row["global_step"] == 240
    table = variants.markdown_table([row, dict(name="short_run", status="diverged")])
    lines = table.splitlines()
    assert lines[2].startswith("| jem | 0.961 | 0.050 | 1.000 | n/a |") and lines[2].endswith("| 1 | ok | unknown |")
    assert lines[3] == "| short_run | " + " | ".join(["n/a"] * len(variants.COLUMNS)) + " | n/a | diverged | n/a |"


def test_a_trained_row_records_the_commit_it_was_trained_on_and_keeps_it_when_reused(tmp_path, monkeypatch):
    def fake_run(command, log):
        if "jem_tf.train" in command:
            _finished_run(str(tmp_path), "jem", {"accuracy": 0.5})
        return 0, 1.0

    monkeypatch.setattr(variants, "_run", fake_run)
    monkeypatch.setattr(variants, "_code_version", lambda: "abc1234")
    assert variants.run_variant(variants.VARIANTS[1], str(tmp_path), [], [], rerun=False)["code"] == "abc1234"
    monkeypatch.setattr(variants, "_code_version", lambda: "def5678")
    assert variants.run_variant(variants.VARIANTS[1], str(tmp_path), [], [], rerun=False)["code"] == "abc1234"


def test_a_divergence_is_a_result_and_a_crash_names_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(variants, "_run", lambda command, log: (variants.DIVERGED_EXIT, 2.0))
    row = variants.run_variant(variants.VARIANTS[1], str(tmp_path), ["--preset=quick"], [], rerun=False)
    assert row["status"] == "diverged"
    monkeypatch.setattr(variants, "_run", lambda command, log: (1, 2.0))
    row = variants.run_variant(variants.VARIANTS[1], str(tmp_path), ["--preset=quick"], [], rerun=False)
    assert row["status"].startswith("training failed (exit 1,") and "jem_train.log" in row["status"]
