"""benchmarks.lockstep_reference: jem_tf's JEM training step pinned to the official code's.

Without torch: the SGLD noise the tool feeds the reference is the noise `sgld_sample` adds, and the
per-step comparison reports the largest differences. With torch and a checkout of the reference
(tests/reference_env.py: JEM_REFERENCE_DIR, JEM_TORCH_PYTHON): 4 training steps of both, from the
same imported weights and buffer on the same batches and draws, agree within 1e-3 in loss, logits,
SGLD samples, weights and the final buffer (issue 17, item 5: the test that pins the step)."""

import json

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from reference_env import REFERENCE_DIR, TORCH_PYTHON, torch_and_reference_missing

from benchmarks import lockstep_reference
from jem_tf.sampling import sgld_sample


@pytest.mark.parametrize("steps", [1, 3])
def test_fed_noise_is_the_noise_sgld_adds(steps):
    """With a flat density the chains move only by the noise: sgld_sample from zeros gives
    noise_std times the sum of the draws `sgld_noise` reproduces (NCHW, for the reference)."""
    seed = np.array([7, 123], np.int64)
    moved = sgld_sample(lambda x: tf.reduce_sum(0.0 * x, axis=[1, 2, 3]), tf.zeros((4, 32, 32, 3)), steps,
                        step_size=1.0, noise_std=1.0, seed=tf.constant(seed)).numpy()
    fed = lockstep_reference.sgld_noise(seed, steps, batch_size=4)
    assert fed.shape == (steps, 4, 3, 32, 32)
    np.testing.assert_allclose(np.transpose(moved, (0, 3, 1, 2)), fed.sum(axis=0), atol=1e-5)


def _side(scale):
    """Fake records of one side for 2 steps: every compared value offset by `scale`."""
    rng = np.random.default_rng(0)
    base = {name: rng.normal(size=(2, 4, 10)).astype(np.float32) for name in ("logits_p_d", "logits_q", "logits_lab")}
    records = {name: value + scale for name, value in base.items()}
    records.update(loss=np.array([2.3, 2.2]) + scale, lr=np.array([0.0, 1e-4]),
                   samples=np.zeros((2, 4, 3, 32, 32), np.float32) + scale,
                   buffer=np.zeros((20, 3, 32, 32), np.float32) + scale)
    return records


def test_compare_reports_the_largest_difference_of_each_value_per_step():
    official = _side(0.0)
    official["weight_keys"] = np.array(["f.conv1.weight", "class_output.bias"])
    official["weights"] = np.zeros((2, 5), np.float32)
    ours = _side(1e-4)
    ours["weights"] = [{"f.conv1.weight": np.zeros((2, 2)), "class_output.bias": np.array([0.0])},
                       {"f.conv1.weight": np.full((2, 2), 3e-3), "class_output.bias": np.array([0.0]),
                        "f.linear.bias": np.array([9.0])}]  # a head the reference's record leaves out
    rows, buffer = lockstep_reference.compare(ours, official)
    assert [row[0] for row in rows] == [0, 1] and buffer == pytest.approx(1e-4)
    for row in rows:
        assert row[3:6] == pytest.approx([1e-4] * 3, rel=1e-3)
    assert (rows[0][6], rows[1][6]) == (0.0, pytest.approx(3e-3))
    table = lockstep_reference.format_table(rows)
    assert "| 1 | 0.0001 | 2.200000 | 1.00e-04 | 1.00e-04 | 1.00e-04 | 3.00e-03 |" in table
    assert lockstep_reference.windows(rows, every=2, steps=2) == [[2, "0–1", *rows[1][3:]]]
    ours["lr"] = np.array([0.0, 2e-4])
    with pytest.raises(lockstep_reference.SideFailed, match="learning rate"):
        lockstep_reference.compare(ours, official)


def _main_in_process(*argv) -> int:
    flag_values = flags.FlagValues()
    lockstep_reference.define_flags(flag_values)
    flag_values(["lockstep_reference", *argv])
    return lockstep_reference.main(["lockstep_reference"], flag_values)


def test_missing_reference_or_torch_is_refused(tmp_path):
    assert _main_in_process(f"--reference_dir={tmp_path}", f"--torch_python={TORCH_PYTHON}") == 2
    assert _main_in_process(f"--reference_dir={tmp_path}") == 2


@pytest.mark.skipif(bool(torch_and_reference_missing()), reason=torch_and_reference_missing() or "available")
def test_four_steps_agree_with_the_official_code(tmp_path):
    """The training loop's compiled step. WRN-10-1, batch 8, a 20-chain buffer (so chains are drawn
    again after their write-back), a re-initialisation rate of 0.25 (so fresh chains occur), 3 SGLD
    steps with noise, Adam 1e-3 with 2 warm-up steps (so steps at rate 0, in the warm-up and at the
    full rate)."""
    code = _main_in_process(
        f"--reference_dir={REFERENCE_DIR}", f"--torch_python={TORCH_PYTHON}", f"--output_dir={tmp_path}",
        "--steps=4", "--depth=10", "--width=1", "--batch_size=8", "--buffer_size=20", "--sgld_steps=3",
        "--reinit_freq=0.25", "--learning_rate=1e-3", "--warmup_steps=2", "--tolerance=1e-3",
        "--nofloat64_control")
    summary = json.loads((tmp_path / "lockstep_reference.json").read_text())
    assert code == 0, summary["worst"]
    assert summary["agree"] and len(summary["per_step"]) == 4
    assert all(value <= 1e-3 for value in summary["worst"].values())
    assert [row[1] for row in summary["per_step"]] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])
    with np.load(tmp_path / "script.npz") as script:
        slots, reinit = script["slots"], script["reinit"]
    assert reinit.any() and not reinit.all(), "the draws exercise both fresh and persistent chains"
    assert len(np.unique(slots)) < slots.size, "some chain is drawn again after its write-back"
