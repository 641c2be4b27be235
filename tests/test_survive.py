"""A run survives (issue #7): damaged checkpoints, a garbled state file, two writers, preemption,
divergence. Tiny in-process runs of `loop.train` (WRN-10-1 on digits, 10 steps, a checkpoint every
5), each compared with one uninterrupted run: surviving means the same final weights."""

import json
import os
import shutil
import signal

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_FINAL_STEP, assert_same_checkpoint, checkpoint_tensors, tiny_config
from train_hooks import wrap_train_step

from jem_tf import cli
from jem_tf.evaluation import suite
from jem_tf.workdir import checkpoints, lock, restore
from trainers import loop, preemption, recovery

FINAL_STEP = TINY_FINAL_STEP


def assert_same_state(workdir, reference_workdir):
    assert_same_checkpoint(workdir, reference_workdir, FINAL_STEP)


@pytest.fixture
def reference(tiny_run):
    """An uninterrupted run to FINAL_STEP (checkpoints 0, 5, 10): the session's tiny run, shared."""
    return tiny_run


@pytest.fixture
def copy_of(tiny_run_copy):
    return tiny_run_copy


def _data_file(workdir, step):
    directory = os.path.join(workdir, "checkpoints")
    (name,) = [n for n in os.listdir(directory) if n.startswith(f"ckpt-{step}.data-")]
    return os.path.join(directory, name)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _overwrite_4kb(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(np.random.default_rng(0).bytes(4096))


DAMAGES = {
    "truncated data": lambda workdir: _truncate(_data_file(workdir, FINAL_STEP)),
    "4 KB overwritten": lambda workdir: _overwrite_4kb(_data_file(workdir, FINAL_STEP)),
    "index deleted": lambda workdir: os.remove(os.path.join(workdir, "checkpoints", f"ckpt-{FINAL_STEP}.index")),
    # What a reader sees while the trainer is still writing the newest index.
    "index half-written": lambda workdir: _truncate(os.path.join(workdir, "checkpoints", f"ckpt-{FINAL_STEP}.index")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_newest_checkpoint_is_skipped_by_every_command(copy_of, reference, damage, caplog):
    DAMAGES[damage](copy_of)
    checkpoint_folder = os.path.join(copy_of, "checkpoints")
    before = sorted(os.listdir(checkpoint_folder))
    # Evaluation and export (readers) restore the newest intact checkpoint and move nothing.
    run, _ = suite.restore_run(copy_of)
    assert run.checkpoint.endswith("ckpt-5") and run.global_step == 5 and run.has_replay_buffer
    network, _, run_info = restore.restore_run(copy_of, with_replay_buffer=False)
    assert run_info["global_step"] == 5 and not hasattr(network, "replay_buffer")
    assert sorted(os.listdir(checkpoint_folder)) == before
    # Training moves the broken one aside, resumes from step 5 and ends where the intact run ended.
    caplog.set_level("WARNING")
    metrics = loop.train(tiny_config(copy_of))
    assert metrics["steps_this_session"] == FINAL_STEP - 5
    assert_same_state(copy_of, reference)
    broken_dir = os.path.join(checkpoint_folder, "broken")
    broken = os.listdir(broken_dir) if os.path.isdir(broken_dir) else []
    if damage == "index deleted":
        assert broken == [], "a checkpoint without its index is not a candidate: nothing to move"
    else:
        assert any(name.endswith(".index") for name in broken) and any(".data-" in name for name in broken)
        assert any(name.endswith(".reason.txt") for name in broken)
        assert f"ckpt-{FINAL_STEP} failed verification" in caplog.text


def test_export_of_a_run_with_a_damaged_newest_checkpoint_exports_the_intact_one(copy_of, tmp_path):
    from export import archive, savedmodel  # noqa: PLC0415

    _truncate(_data_file(copy_of, FINAL_STEP))
    path = savedmodel.export_run(copy_of, str(tmp_path / "export"), ood_max_images=20)
    assert path == str(tmp_path / "export" / "5")
    assert archive.read_metadata(path)["run"]["checkpoint"].endswith("ckpt-5")


def test_non_finite_weights_fail_verification(tmp_path):
    weight = tf.Variable(tf.ones([3]))
    path = tf.train.Checkpoint(model=tf.Module()).write(str(tmp_path / "empty"))
    checkpoints.verify_checkpoint(path)
    module = tf.Module()
    module.kernel = weight
    weight.assign([1.0, np.nan, 2.0])
    path = tf.train.Checkpoint(model=module).write(str(tmp_path / "nan"))
    with pytest.raises(ValueError, match="non-finite"):
        checkpoints.verify_checkpoint(path)


@pytest.mark.parametrize("state_file", ["deleted", "garbled", "stale"])
def test_a_lost_state_file_is_rebuilt_not_read_as_no_checkpoint(copy_of, reference, state_file):
    checkpoint_folder = os.path.join(copy_of, "checkpoints")
    state_path = os.path.join(checkpoint_folder, "checkpoint")
    if state_file == "deleted":
        os.remove(state_path)
    elif state_file == "garbled":
        with open(state_path, "w") as f:
            f.write('model_checkpoint_path: "ckpt-\x00\ngarbage {{{')
    else:
        with open(state_path, "w") as f:
            f.write('model_checkpoint_path: "ckpt-0"\nall_model_checkpoint_paths: "ckpt-0"\n')
    before = {name: os.path.getmtime(os.path.join(checkpoint_folder, name)) for name in os.listdir(checkpoint_folder)
              if name.startswith("ckpt-")}
    # Leftovers of a killed run are cleaned at start.
    os.makedirs(os.path.join(checkpoint_folder, "ckpt-15_temp", "part-00000-of-00001"))
    os.makedirs(os.path.join(copy_of, "export", ".staging-15-999999999"))
    with open(os.path.join(copy_of, "config.json.tmp-999999999"), "w") as f:
        f.write("{")
    metrics = loop.train(tiny_config(copy_of))
    assert metrics["steps_this_session"] == 0, "it must resume at step 10, not restart at 0"
    after = {name: os.path.getmtime(os.path.join(checkpoint_folder, name)) for name in os.listdir(checkpoint_folder)
             if name.startswith("ckpt-")}
    assert after == before, "no good checkpoint may be rewritten"
    assert tf.train.get_checkpoint_state(checkpoint_folder).all_model_checkpoint_paths[:] == [
        os.path.join(checkpoint_folder, f"ckpt-{s}") for s in (0, 5, FINAL_STEP)]
    assert not os.path.exists(os.path.join(checkpoint_folder, "ckpt-15_temp"))
    assert not os.path.exists(os.path.join(copy_of, "export", ".staging-15-999999999"))
    assert not os.path.exists(os.path.join(copy_of, "config.json.tmp-999999999"))
    assert_same_state(copy_of, reference)


def test_a_second_writer_is_refused_naming_the_holder_and_nothing_is_written(copy_of):
    config_before = open(os.path.join(copy_of, "config.json")).read()
    metrics_before = open(os.path.join(copy_of, "metrics.json")).read()
    with lock.WorkdirLock(copy_of):
        with pytest.raises(lock.WorkdirLockedError, match=rf"PID {os.getpid()} on host") as refused:
            loop.train(tiny_config(copy_of, learning_rate=0.02))
        # Readers do not take the lock.
        assert restore.restore_run(copy_of)[2]["global_step"] == FINAL_STEP
    assert refused.value.exit_code == 2
    assert open(os.path.join(copy_of, "config.json")).read() == config_before
    assert open(os.path.join(copy_of, "metrics.json")).read() == metrics_before
    # Released: the next run proceeds.
    assert loop.train(tiny_config(copy_of))["global_step"] == FINAL_STEP


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_a_rerun_continues_the_same_run(reference, tmp_path, monkeypatch,
                                                                         signal_number):
    workdir = str(tmp_path / "run")

    def send_signal_at_step_3(step, logs, model):
        if step == 3:
            os.kill(os.getpid(), signal_number)  # delivered while the loop runs, like a scheduler's
        return logs

    wrap_train_step(monkeypatch, send_signal_at_step_3)
    handler_before = signal.getsignal(signal_number)
    with pytest.raises(preemption.TrainingPreemptedError) as stopped:
        loop.train(tiny_config(workdir))
    assert stopped.value.step == 3 and stopped.value.exit_code == 128 + signal_number
    status = json.load(open(os.path.join(workdir, "run_status.json")))
    assert status["state"] == "preempted" and status["step"] == 3
    assert status["signal"] == signal.Signals(signal_number).name
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints")) == [0, 3]
    assert signal.getsignal(signal_number) is handler_before, "the loop's handler must be uninstalled"
    monkeypatch.undo()
    metrics = loop.train(tiny_config(workdir))
    assert metrics["steps_this_session"] == FINAL_STEP - 3
    assert json.load(open(os.path.join(workdir, "run_status.json")))["state"] == "finished"
    assert_same_state(workdir, reference)


def test_time_based_checkpoints(tmp_path):
    workdir = str(tmp_path / "run")
    loop.train(tiny_config(workdir, max_steps=3, checkpoint_every_steps=1000, checkpoint_every_secs=1e-6,
                           keep_checkpoints=10))
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints")) == [0, 1, 2, 3]


def _nan_at_step(step_to_break, attempts, wild_chain_at=None, crash_at_replayed=None):
    """A deterministic divergence: the first `attempts` times step `step_to_break` runs, a weight
    becomes NaN and the loss is NaN, as in a real blow-up (the model stays broken until restored).
    Optionally one replay-buffer chain is sent to 50 at step `wild_chain_at` (so the checkpoint the
    recovery restores holds a chain to re-initialise), and the process "crashes" when step
    `crash_at_replayed` runs again after the recovery (before any new checkpoint)."""
    fired, seen = [], []

    def hook(step, logs, model):
        if step == wild_chain_at and all(s != step for s, _, _ in seen):
            images = model.replay_buffer.images.numpy()
            images[0] = 50.0
            model.replay_buffer.images.assign(images)
        if step == step_to_break and len(fired) < attempts:
            fired.append(step)
            model.trainable_variables[0].assign(tf.fill(model.trainable_variables[0].shape, np.nan))
            logs = dict(logs, loss=tf.constant(np.nan))
        if fired and step == crash_at_replayed:
            raise RuntimeError("simulated crash after the recovery")
        seen.append((step, float(logs["loss"]), getattr(model, "sgld_steps", None)))
        return logs

    return hook, seen


@pytest.fixture(scope="module")
def recovered(tmp_path_factory):
    """A run whose step 7 diverges once (with a wild chain in checkpoint 5), recovered."""
    workdir = str(tmp_path_factory.mktemp("recovered"))
    hook, seen = _nan_at_step(7, attempts=1, wild_chain_at=5)
    with pytest.MonkeyPatch.context() as monkeypatch:
        wrap_train_step(monkeypatch, hook)
        metrics = loop.train(tiny_config(workdir))
    return workdir, metrics, seen


def test_divergence_is_recovered_from_the_last_good_checkpoint(recovered):
    workdir, metrics, seen = recovered
    assert metrics["global_step"] == FINAL_STEP and metrics["recoveries"] == 1
    # Step 7 diverged; steps 6.. ran again from checkpoint 5 with 2 + 5 SGLD steps, to a finite end.
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5, 6, 7, 6, 7, 8, 9, 10]
    assert seen[-1][0] == FINAL_STEP and np.isfinite(seen[-1][1]) and seen[-1][2] == 7
    (record,) = json.load(open(os.path.join(workdir, "recoveries.json")))
    assert record["step"] == 7 and record["restored_step"] == 5 and "the loss is nan" in record["reason"]
    assert record["learning_rate_scale"] == [1.0, 0.5] and record["sgld_steps"] == [2, 7]
    assert record["chains_reinitialised"] == 1
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert (config["learning_rate_scale"], config["extra_sgld_steps"], config["recoveries"]) == (0.5, 5, 1)
    assert all(np.all(np.isfinite(v)) for v in checkpoint_tensors(workdir, FINAL_STEP).values())
    events = [value.tag for name in os.listdir(os.path.join(workdir, "tensorboard"))
              for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, "tensorboard", name))
              for value in event.summary.value]
    assert "recovery/count" in events and "recovery/event" in events


def test_a_run_killed_after_a_recovery_resumes_the_same_recovered_run(recovered, tmp_path, monkeypatch):
    reference_workdir, _, _ = recovered
    workdir = str(tmp_path / "run")
    hook, _ = _nan_at_step(7, attempts=1, wild_chain_at=5, crash_at_replayed=6)
    wrap_train_step(monkeypatch, hook)
    with pytest.raises(RuntimeError, match="simulated crash"):
        loop.train(tiny_config(workdir))
    assert json.load(open(os.path.join(workdir, "run_status.json")))["state"] == "failed"
    monkeypatch.undo()
    # From checkpoint 5 again, with the recovered settings from config.json and the same chains.
    metrics = loop.train(tiny_config(workdir))
    assert metrics["recoveries"] == 1 and metrics["steps_this_session"] == FINAL_STEP - 5
    assert_same_state(workdir, reference_workdir)


def test_a_resume_continues_with_the_recovered_settings(recovered, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    shutil.copytree(recovered[0], workdir)
    hook, seen = _nan_at_step(-1, attempts=0)
    wrap_train_step(monkeypatch, hook)
    loop.train(tiny_config(workdir, max_steps=FINAL_STEP + 1))  # the original command, one step more
    assert [(step, sgld_steps) for step, _, sgld_steps in seen] == [(FINAL_STEP + 1, 7)]
    assert json.load(open(os.path.join(workdir, "config.json")))["learning_rate_scale"] == 0.5


def test_without_recoveries_left_divergence_stops_as_before(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    hook, _ = _nan_at_step(7, attempts=10)
    wrap_train_step(monkeypatch, hook)
    with pytest.raises(recovery.TrainingDivergedError, match=r"diverged at step 7: the loss is nan.*ckpt-5"):
        loop.train(tiny_config(workdir, max_recoveries=0))
    assert json.load(open(os.path.join(workdir, "run_status.json")))["state"] == "diverged"
    assert not os.path.exists(os.path.join(workdir, "recoveries.json"))
    # With recoveries that keep failing, it gives up after --max_recoveries.
    with pytest.raises(recovery.TrainingDivergedError, match=r"2 of --max_recoveries=2 used"):
        loop.train(tiny_config(workdir, max_recoveries=2))
    assert len(json.load(open(os.path.join(workdir, "recoveries.json")))) == 2


def test_recovery_reinitialises_only_wild_chains():
    from jem_tf.sampling import ReplayBuffer  # noqa: PLC0415

    buffer = ReplayBuffer(6, (2, 2, 1), seed=0)
    images = buffer.images.numpy()
    images[1, 0, 0, 0] = np.nan
    images[4, 1, 1, 0] = -7.0
    images[5, 1, 0, 0] = 2.5  # outside [-1, 1] but within the limit: kept
    buffer.images.assign(images)
    assert buffer.reinitialise_wild(3.0, seed=(0, 7, 0)) == 2
    after = buffer.images.numpy()
    for kept in (0, 2, 3, 5):
        np.testing.assert_array_equal(after[kept], images[kept])
    assert np.all(np.abs(after[[1, 4]]) <= 1.0)



def test_a_reader_lists_again_when_the_trainer_rotates_a_checkpoint_away_under_it(copy_of, monkeypatch):
    """The race export/evaluation meet on a training workdir, made deterministic: while the reader
    verifies ckpt-10, the trainer saves ckpt-11 and its rotation deletes every older checkpoint."""
    checkpoint_folder = os.path.join(copy_of, "checkpoints")
    original_verify = checkpoints.verify_checkpoint
    rotated = []

    def verify_during_rotation(path):
        if not rotated:
            rotated.append(path)
            for name in os.listdir(checkpoint_folder):
                if name.startswith(f"ckpt-{FINAL_STEP}."):  # the "new" checkpoint: same content, next step
                    shutil.copy(os.path.join(checkpoint_folder, name),
                                os.path.join(checkpoint_folder, name.replace(f"ckpt-{FINAL_STEP}.", "ckpt-11.")))
            for name in os.listdir(checkpoint_folder):
                if name.startswith(("ckpt-0.", "ckpt-5.", f"ckpt-{FINAL_STEP}.")):
                    os.remove(os.path.join(checkpoint_folder, name))
        return original_verify(path)

    monkeypatch.setattr(checkpoints, "verify_checkpoint", verify_during_rotation)
    _, _, run_info = restore.restore_run(copy_of, with_replay_buffer=False)
    assert rotated == [os.path.join(checkpoint_folder, f"ckpt-{FINAL_STEP}")]
    assert run_info["global_step"] == 11
    assert not os.path.exists(os.path.join(checkpoint_folder, "broken")), "a reader moves nothing"


def test_state_file_repair_units(tmp_path):
    directory = str(tmp_path)
    for step in (3, 6):
        open(os.path.join(directory, f"ckpt-{step}.index"), "w").close()
    assert checkpoints.repair_checkpoint_state(directory) == [3, 6]
    state = tf.train.get_checkpoint_state(directory)
    assert state.model_checkpoint_path == os.path.join(directory, "ckpt-6")
    # Absolute paths of a workdir that was moved are stale.
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "/elsewhere/ckpt-6"\nall_model_checkpoint_paths: "/elsewhere/ckpt-3"\n'
                'all_model_checkpoint_paths: "/elsewhere/ckpt-6"\n')
    checkpoints.repair_checkpoint_state(directory)
    assert tf.train.get_checkpoint_state(directory).model_checkpoint_path == os.path.join(directory, "ckpt-6")
    # A state file naming checkpoints that are all gone is moved aside, not deleted.
    for step in (3, 6):
        os.remove(os.path.join(directory, f"ckpt-{step}.index"))
    assert checkpoints.repair_checkpoint_state(directory) == []
    assert not os.path.exists(os.path.join(directory, "checkpoint"))
    assert [n.split(".")[0] for n in os.listdir(os.path.join(directory, "broken"))] == ["checkpoint"]


# -- issue #15: no repair may quietly cost a run --------------------------------------------------


@pytest.mark.parametrize("repair", ["state file deleted", "newest checkpoint corrupt"])
def test_a_repaired_workdir_rotates_like_a_fresh_one(copy_of, repair):
    """A rebuilt state file without checkpoint timestamps made CheckpointManager keep the checkpoint_folder
    it listed forever (--keep_checkpoints ignored), and every later start pinned them again."""
    checkpoint_folder = os.path.join(copy_of, "checkpoints")
    if repair == "state file deleted":
        os.remove(os.path.join(checkpoint_folder, "checkpoint"))
    else:
        _truncate(_data_file(copy_of, FINAL_STEP))
    loop.train(tiny_config(copy_of, max_steps=20, keep_checkpoints=2))
    assert checkpoints.checkpoint_steps(checkpoint_folder) == [15, 20], "a fresh run to step 20 keeps 15 and 20"
    # The next start reads the state file the manager wrote: still nothing pinned.
    loop.train(tiny_config(copy_of, max_steps=25, keep_checkpoints=2))
    assert checkpoints.checkpoint_steps(checkpoint_folder) == [20, 25]
    assert sorted(n.split(".")[0] for n in os.listdir(checkpoint_folder) if n.startswith("ckpt-")) == [
        "ckpt-20", "ckpt-20", "ckpt-25", "ckpt-25"]


def test_every_checkpoint_damaged_stops_instead_of_restarting_from_step_0(copy_of):
    checkpoint_folder = os.path.join(copy_of, "checkpoints")
    for step in (0, 5, FINAL_STEP):
        _truncate(_data_file(copy_of, step))
    kept = {name: open(os.path.join(copy_of, name)).read() for name in ("config.json", "run_status.json")}
    for _attempt in range(2):  # the evidence of progress survives the first refusal
        with pytest.raises(cli.RunStopped,
                           match=r"made progress.*checkpoints/broken/.*--restart_from_scratch") as stopped:
            loop.train(tiny_config(copy_of))
        assert stopped.value.exit_code == 5
        assert {name: open(os.path.join(copy_of, name)).read() for name in kept} == kept
    broken = os.listdir(os.path.join(checkpoint_folder, "broken"))
    assert sorted(n.split(".")[0] for n in broken if n.endswith(".index")) == ["ckpt-0", "ckpt-10", "ckpt-5"]
    # Only the explicit flag starts over, and it deletes nothing.
    metrics = loop.train(tiny_config(copy_of, restart_from_scratch=True))
    assert metrics["steps_this_session"] == FINAL_STEP
    assert sorted(os.listdir(os.path.join(checkpoint_folder, "broken"))) == sorted(broken)


def test_a_workdir_without_progress_still_starts_at_step_0(copy_of):
    """config.json and run_info.json but no checkpoint (a run killed before its first save) is not
    a run that lost its checkpoints."""
    for name in os.listdir(os.path.join(copy_of, "checkpoints")):
        os.remove(os.path.join(copy_of, "checkpoints", name))
    for name in ("metrics.json", "run_status.json"):
        os.remove(os.path.join(copy_of, name))
    assert loop.train(tiny_config(copy_of, max_steps=1))["steps_this_session"] == 1


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_planted_lock_link_is_refused_and_its_target_left_alone(tmp_path, link):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (os.symlink if link == "symbolic" else os.link)(target, workdir / ".lock")
    with pytest.raises(cli.RunStopped, match=r"\.lock.*(symbolic link|not a plain file)") as refused:
        loop.train(tiny_config(str(workdir), max_steps=1))
    assert refused.value.exit_code == 2
    assert target.read_text() == "keep me"
    assert sorted(os.listdir(workdir)) == [".lock"], "the refused run writes nothing"


def test_run_files_are_never_written_through_a_planted_link(tmp_path):
    from jem_tf.configs.base import write_json_atomically  # noqa: PLC0415

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    # A link under the temporary name, and a link at the name itself.
    path = tmp_path / "config.json"
    os.symlink(target, f"{path}.tmp-{os.getpid()}")
    write_json_atomically(str(path), "{}")
    assert path.read_text() == "{}" and target.read_text() == "keep me"
    os.remove(path)
    os.symlink(target, path)
    write_json_atomically(str(path), "{}")
    assert not path.is_symlink() and path.read_text() == "{}" and target.read_text() == "keep me"
    # The trainer's sample grids (tf.io.write_file followed links).
    workdir = tmp_path / "run"
    (workdir / "samples").mkdir(parents=True)
    os.symlink(target, workdir / "samples" / "step_0000001.png")
    loop.train(tiny_config(str(workdir), max_steps=1))
    assert target.read_text() == "keep me"
    assert (workdir / "samples" / "step_0000001.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failed_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from jem_tf.configs import base  # noqa: PLC0415

    path = tmp_path / "report.md"
    path.write_text("old")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(base.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        base.write_json_atomically(str(path), "new")
    assert sorted(os.listdir(tmp_path)) == ["report.md"] and path.read_text() == "old"
