"""Steps the official PyTorch JEM and jem_tf in lockstep from one state and compares every step.

    python -m benchmarks.lockstep_reference --reference_dir=/path/to/JEM --torch_python=/venv-torch/bin/python \\
        --steps=20 --output_dir=/tmp/lockstep
    python -m benchmarks.lockstep_reference ... --steps=60 --results_json=lockstep_reference   # docs table

Both sides start from the same weights and replay buffer: the reference's own initial state (its
`get_model_and_buffer` after `torch.manual_seed(--seed)`, saved by its `checkpoint()`), imported into
a jem_tf workdir by `trainers.from_reference`. jem_tf's JEM, built as the training loop builds it,
first runs `--steps` steps of `JEM.train_step` eagerly (buffer draw, SGLD, cross-entropy on its own
batch (`--xent_batch=independent`) + log p(x), `TorchAdam` on the reference's warm-up schedule, buffer
write-back), with spies that record what it draws: the buffer slots, which chains were
re-initialised and their fresh U(-1, 1) starts, the seed of the SGLD noise. With `--ours=compiled`
(the default) the compared run is then the training loop's compiled step
(`trainers.distribution.distributed_train_step`) from a fresh restore: its draws are stateless
functions of (seed, step), the same. The reference's own `main()` replays the recorded draws and
batches (`benchmarks/reference_worker.py lockstep`, under `--torch_python`; the reference is imported
from `--reference_dir` at run time, never copied here): its loop runs unchanged, only its random
draws and data loaders are replaced. Data noise is zero (the batches are given as they are) and the
batches are fixed synthetic images (smooth random colour fields in [-1, 1] with random labels), so
only the training step itself is compared.

Printed per step: the learning rate, the loss, and the largest absolute differences of the loss,
the logits (of the p(x) batch, the samples and the cross-entropy batch, all at the step's weights),
the SGLD samples (as written back to the buffer) and the weights after the update; then the largest
difference of the final buffer. Everything in float32 on CPU. With `--float64_control` (the default)
the reference also runs the same steps in float64 from the same start, and each float32 run's
distance from it is printed: how far float32 rounding alone carries a run, the scale against which
a difference between the two implementations is read (SGLD and Adam amplify rounding from step to
step, the more so once the energies move).

Exit codes: 0 every difference within --tolerance; 1 some difference beyond it (or a side failed; its
log is named); 2 bad flags, reference checkout or torch Python.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags, logging

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_WORKER = os.path.join(REPO_ROOT, "benchmarks", "reference_worker.py")
EXIT_DIFFERENT, EXIT_BAD_INPUT = 1, 2
NUM_CLASSES, IMAGE_SHAPE = 10, (32, 32, 3)  # the reference's cifar10 network
COMPARED = ("loss", "logits", "samples", "weights")
# With the float64 control: how far each float32 run is from the same steps in float64.
CONTROLLED = ("logits", "samples", "weights")
CONTROL = [f"{value}, {side} vs float64" for value in CONTROLLED for side in ("official", "jem_tf")]
# Columns of the per-step table; the differences are max |a - b|, jem_tf vs official unless named.
COLUMNS = ["step", "learning rate", "loss (official)", *COMPARED]


class SideFailed(Exception):
    """A side of the lockstep failed; the message names its log."""


def define_flags(flag_values=flags.FLAGS):
    def define(kind, name, default, help_text, **kwargs):
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values, **kwargs)

    define("string", "reference_dir", None, "Checkout of github.com/wgrathwohl/JEM (imported at run time).")
    define("string", "torch_python", None, "A Python with torch and numpy (not a dependency of jem_tf).")
    define("string", "output_dir", None, "Where the checkpoint, workdir, script, results and logs go "
           "(default: a temporary directory).")
    define("integer", "steps", 20, "Training steps on each side.", lower_bound=1)
    define("integer", "depth", 10, "WideResNet depth 6n+4.", lower_bound=10)
    define("integer", "width", 2, "WideResNet widening factor.", lower_bound=1)
    define("integer", "batch_size", 8, "Batch size (both batches: p(x) and cross-entropy).", lower_bound=1)
    define("integer", "buffer_size", 100, "Replay buffer size (a multiple of 10, at least the batch).", lower_bound=10)
    define("integer", "sgld_steps", 5, "SGLD steps per training step.", lower_bound=1)
    define("float", "sgld_step_size", 1.0, "SGLD step size.")
    define("float", "sgld_noise", 0.01, "SGLD noise; the same draws are fed to both sides (0: none).",
           lower_bound=0.0)
    define("float", "reinit_freq", 0.05, "Probability of re-initialising a chain.", lower_bound=0.0, upper_bound=1.0)
    define("float", "learning_rate", 1e-3, "Adam learning rate.", lower_bound=0.0)
    define("integer", "warmup_steps", 10, "Linear learning-rate warm-up steps (0: none).", lower_bound=0)
    define("integer", "seed", 1, "Seeds the initial weights and buffer (torch), jem_tf's draws and the batches.")
    define("float", "tolerance", 1e-3, "Largest absolute difference accepted in any compared value.", lower_bound=0.0)
    flags.DEFINE_enum("ours", "compiled", ["compiled", "eager"], "Which jem_tf step is compared: `compiled` (the "
                      "training loop's tf.function step, trainers.distribution.distributed_train_step) or `eager` "
                      "(JEM.train_step called eagerly; its spies record the draws in both modes).",
                      flag_values=flag_values)
    define("bool", "float64_control", True, "Also run the official steps in float64 from the same start: how "
           "far float32 rounding alone moves each side (a third, slower run of the reference).")
    define("integer", "threads", 1, "Threads of each side (torch.set_num_threads; TensorFlow intra-op).",
           lower_bound=1)
    define("integer", "report_every", 10, "Steps per row of the --results_json table (the largest "
           "difference in each window; every step is kept in the JSON's per_step).", lower_bound=1)
    define("string", "results_json", None, "Also write docs/results/NAME.json (commit, machine, date, command; "
           "rows of other --steps kept) and re-render the docs from it.")


def settings_of(flag_values) -> dict:
    names = ("steps", "depth", "width", "batch_size", "buffer_size", "sgld_steps", "sgld_step_size", "sgld_noise",
             "reinit_freq", "learning_rate", "warmup_steps", "seed", "ours", "float64_control")
    return {name: flag_values[name].value for name in names}


def make_batches(steps: int, batch_size: int, seed: int) -> dict:
    """Fixed batches per step, NHWC float32 in [-1, 1]: x_p_d, x_lab and int labels y_lab. Smooth
    random colour fields (8x8 noise upsampled, plus a little pixel noise), so that the network sees
    image-like inputs; the same generator gives the same first steps for any `steps`."""
    rng = np.random.default_rng(seed)
    batches = {"x_p_d": [], "x_lab": [], "y_lab": []}
    for _ in range(steps):
        for key in ("x_p_d", "x_lab"):
            coarse = rng.uniform(-1.0, 1.0, (batch_size, 8, 8, 3))
            fine = rng.uniform(-1.0, 1.0, (batch_size,) + IMAGE_SHAPE)
            batches[key].append((0.9 * coarse.repeat(4, axis=1).repeat(4, axis=2) + 0.1 * fine).astype(np.float32))
        batches["y_lab"].append(rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32))
    return {key: np.stack(value) for key, value in batches.items()}


def _nchw(images):
    return np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)))


def _worker(flag_values, mode, log_path, *args):
    command = [flag_values.torch_python, REFERENCE_WORKER, mode, f"--reference_dir={flag_values.reference_dir}",
               f"--threads={flag_values.threads}", *args]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(flag_values.threads))
    with open(log_path, "w") as log:
        code = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO_ROOT, env=env).returncode
    if code:
        raise SideFailed(f"the reference worker ({mode}) exited with {code}; see {log_path}")


def build_jem(workdir: str, settings: dict):
    """jem_tf's JEM on the imported workdir's checkpoint, with `settings`, built as the training
    loop builds it (trainers.loop._Run): objective model, the reference's schedule scaled as a run's,
    TorchAdam, the training checkpoint restored. Returns (model, config)."""
    import keras  # noqa: PLC0415 (heavy; the flags and --help need none of it)

    from jem_tf.workdir import checkpoints, run_files  # noqa: PLC0415
    from trainers import checkpointing, objectives  # noqa: PLC0415
    from trainers.optimization import ScaledSchedule, learning_rate_schedule, make_optimizer  # noqa: PLC0415

    config = run_files.load_config(workdir)
    run_info = run_files.load_run_info(workdir)
    config.objective, config.precision, config.seed = "jem", "float32", settings["seed"]
    config.batch_size, config.buffer_size = settings["batch_size"], settings["buffer_size"]
    config.sgld_steps, config.sgld_step_size = settings["sgld_steps"], settings["sgld_step_size"]
    config.sgld_noise, config.reinit_freq = settings["sgld_noise"], settings["reinit_freq"]
    config.learning_rate, config.warmup_steps = settings["learning_rate"], settings["warmup_steps"]
    config.p_x_weight, config.p_y_given_x_weight, config.p_xy_weight = 1.0, 1.0, 0.0
    config.xent_batch, config.data_noise = "independent", 0.0
    config.validate()
    keras.utils.set_random_seed(config.seed)
    model = objectives.build_model(config, tuple(run_info["image_shape"]), run_info["num_classes"])
    # One long epoch: the reference's decay epochs are never reached in a lockstep either.
    schedule = ScaledSchedule(learning_rate_schedule(config, steps_per_epoch=10**9), config.learning_rate_scale)
    optimizer = make_optimizer(schedule, config.precision)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    checkpoint = checkpointing.make_checkpoint(model, optimizer)
    if not checkpoints.restore_newest(checkpoint, checkpoints.checkpoint_dir(workdir), writer=False):
        raise SideFailed(f"no checkpoint of {workdir} restores")
    return model, config


def run_ours(model, batches: dict, settings: dict) -> tuple:
    """`settings["steps"]` of `model.train_step`, eagerly, with spies on what it draws and computes.

    Returns (records, script): per step the loss, learning rate, logits (p(x) batch, samples,
    cross-entropy batch) and samples (read back from the buffer after the write-back), the weights
    after each step (the reference's state dict, for `finish_weights`), the final buffer; and the
    script for the reference: batches (NCHW), slots, re-initialisations, fresh chains, SGLD noise.
    """
    import tensorflow as tf  # noqa: PLC0415

    from trainers import jem as jem_module  # noqa: PLC0415

    buffer = model.replay_buffer
    draws, noise_seeds, logits = [], [], []
    original_sample, original_compiled = buffer.sample, jem_module.compiled_sgld
    original_logits = model.data_and_sample_logits

    def sample(local_batch, seed, reinit_freq, labels=None, num_classes=None):
        initial, slots = original_sample(local_batch, seed, reinit_freq, labels=labels, num_classes=num_classes)
        draws.append((initial.numpy(), slots.numpy(), tf.gather(buffer.images, slots).numpy()))
        return initial, slots

    def compiled_sgld(jit_compile=False):
        sampler = original_compiled(jit_compile)

        def recording(log_density, initial, steps, step_size, noise_std, seed, **kwargs):
            noise_seeds.append(tf.cast(seed, tf.int64).numpy())
            return sampler(log_density, initial, steps, step_size, noise_std, seed, **kwargs)

        return recording

    def data_and_sample_logits(data_batches, sample_batches):
        data, samples = original_logits(data_batches, sample_batches)
        logits.append([t.numpy() for t in data] + [t.numpy() for t in samples])
        return data, samples

    records = {key: [] for key in ("loss", "lr", "logits_p_d", "logits_q", "logits_lab", "samples", "weights")}
    buffer.sample, jem_module.compiled_sgld = sample, compiled_sgld
    model.data_and_sample_logits = data_and_sample_logits
    try:
        for k in range(settings["steps"]):
            records["lr"].append(float(model.optimizer.learning_rate))
            logs = model.train_step((tf.constant(batches["x_lab"][k]), tf.constant(batches["y_lab"][k]),
                                     tf.constant(batches["x_p_d"][k])))
            records["loss"].append(float(logs["loss"]))
            logits_lab, logits_p_d, logits_q = logits[-1]  # data batches [x_lab, x_p_d], then the samples
            records["logits_lab"].append(logits_lab)
            records["logits_p_d"].append(logits_p_d)
            records["logits_q"].append(logits_q)
            records["samples"].append(_nchw(tf.gather(buffer.images, draws[-1][1]).numpy()))
            records["weights"].append(_state(model))  # the reference's state dict (numpy copies)
    finally:
        buffer.sample, jem_module.compiled_sgld = original_sample, original_compiled
        del model.data_and_sample_logits
    if len(draws) != settings["steps"] or len(noise_seeds) != settings["steps"]:
        raise SideFailed(f"recorded {len(draws)} buffer draws and {len(noise_seeds)} SGLD runs for "
                         f"{settings['steps']} steps")
    records["buffer"] = _nchw(buffer.images.numpy())
    script = {key: (_nchw(value.reshape((-1,) + IMAGE_SHAPE)).reshape(value.shape[:2] + (3, 32, 32))
                    if key != "y_lab" else value.astype(np.int64)) for key, value in batches.items()}
    script["slots"] = np.stack([slots.astype(np.int64) for _, slots, _ in draws])
    script["reinit"] = np.stack([np.any(initial != stored, axis=(1, 2, 3)) for initial, _, stored in draws])
    script["fresh"] = np.stack([_nchw(np.where(reinit[:, None, None, None], initial, 0.0).astype(np.float32))
                                for (initial, _, _), reinit in zip(draws, script["reinit"])])
    if settings["sgld_noise"] > 0:
        script["noise"] = np.stack([sgld_noise(seed, settings["sgld_steps"], settings["batch_size"])
                                    for seed in noise_seeds])
    script["settings"] = np.asarray(json.dumps(settings))
    return records, script


def _state(model) -> dict:
    from export import reference_state_dict  # noqa: PLC0415

    return reference_state_dict.to_reference_state_dict(model)


def sgld_noise(seed, steps: int, batch_size: int) -> np.ndarray:
    """[steps, batch, C, H, W]: the N(0, 1) draws of `jem_tf.sampling.sgld_sample` from its seed,
    as its loop body draws them (stateless_normal of the global batch, seeded by the seed folded with
    the step). If this and sgld_sample ever part, the lockstep's samples differ by about the noise."""
    import tensorflow as tf  # noqa: PLC0415

    seed = tf.constant(seed, tf.int64)
    return np.stack([_nchw(tf.random.stateless_normal(
        (batch_size,) + IMAGE_SHAPE, seed=tf.random.experimental.stateless_fold_in(seed, tf.constant(step, tf.int32))
    ).numpy()) for step in range(steps)])


def run_ours_compiled(model, batches: dict, script: dict, settings: dict) -> dict:
    """The same steps through the training loop's compiled step (`distributed_train_step`), from a
    fresh restore of the same checkpoint. Its draws are stateless functions of (seed, step), so they
    are the eager pass's (`script`); the records are read around each step: the logits at the step's
    weights by a copy of the network taken before it, the samples from the buffer at the script's
    slots after it. Returns records as `run_ours` does."""
    import tensorflow as tf  # noqa: PLC0415

    from trainers.distribution import distributed_train_step  # noqa: PLC0415

    step_function = distributed_train_step(model, tf.distribute.get_strategy())
    probe = model.to_wide_resnet()
    records = {key: [] for key in ("loss", "lr", "logits_p_d", "logits_q", "logits_lab", "samples", "weights")}
    for k in range(settings["steps"]):
        probe.set_weights(model.get_weights())
        records["lr"].append(float(model.optimizer.learning_rate))
        logs = step_function((tf.constant(batches["x_lab"][k]), tf.constant(batches["y_lab"][k]),
                              tf.constant(batches["x_p_d"][k])))
        records["loss"].append(float(logs["loss"]))
        samples = tf.gather(model.replay_buffer.images, script["slots"][k])
        for key, images in (("logits_lab", batches["x_lab"][k]), ("logits_p_d", batches["x_p_d"][k]),
                            ("logits_q", samples)):
            records[key].append(probe(tf.constant(images), training=False).numpy())
        records["samples"].append(_nchw(samples.numpy()))
        records["weights"].append(_state(model))
    records["buffer"] = _nchw(model.replay_buffer.images.numpy())
    return records


def flatten_weights(records: dict, keys) -> dict:
    """`records` with its per-step state dicts (jem_tf's) as [steps, parameters] in the order of `keys`."""
    if isinstance(records["weights"], np.ndarray):
        return records
    flat = [np.concatenate([np.asarray(state[key], np.float32).ravel() for key in keys])
            for state in records["weights"]]
    return dict(records, weights=np.stack(flat))


def differences(a: dict, b: dict) -> list:
    """Per step {value: max |a - b|} of COMPARED (logits: of all three batches), and the final buffer's."""
    steps = []
    for k in range(len(b["loss"])):
        steps.append(dict(
            loss=abs(float(a["loss"][k]) - float(b["loss"][k])),
            logits=max(float(np.max(np.abs(np.asarray(a[name][k], np.float64) - b[name][k])))
                       for name in ("logits_p_d", "logits_q", "logits_lab")),
            samples=float(np.max(np.abs(np.asarray(a["samples"][k], np.float64) - b["samples"][k]))),
            weights=float(np.max(np.abs(np.asarray(a["weights"][k], np.float64) - b["weights"][k])))))
    return steps


def compare(ours: dict, official: dict, official64: dict | None = None) -> tuple:
    """(rows per step, final buffer difference): COLUMNS' values, then with `official64` CONTROL's."""
    keys = [str(key) for key in official["weight_keys"]]
    ours = flatten_weights(ours, keys)
    for k, (mine, theirs) in enumerate(zip(ours["lr"], official["lr"])):
        if abs(mine - theirs) > 1e-9 * max(1.0, abs(theirs)):
            raise SideFailed(f"step {k}: learning rate {mine!r} (jem_tf) vs {theirs!r} (official): the schedules "
                             "differ")
    main = differences(ours, official)
    control = None
    if official64 is not None:
        control = list(zip(differences(official, official64), differences(ours, official64)))
    rows = []
    for k, step in enumerate(main):
        row = [k, float(official["lr"][k]), float(official["loss"][k])] + [step[name] for name in COMPARED]
        if control:
            row += [side[name] for name in CONTROLLED for side in control[k]]
        rows.append(row)
    return rows, float(np.max(np.abs(np.asarray(ours["buffer"], np.float64) - official["buffer"])))


def format_table(rows) -> str:
    columns = COLUMNS[:3] + [f"max abs diff: {c}" for c in COLUMNS[3:]] + CONTROL[:max(0, len(rows[0]) - len(COLUMNS))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    for step, lr, loss, *values in rows:
        lines.append(f"| {step} | {lr:.3g} | {loss:.6f} | " + " | ".join(f"{d:.2e}" for d in values) + " |")
    return "\n".join(lines)


def windows(rows, every: int, steps: int) -> list:
    """[steps compared, 'a–b', then the largest of each difference over steps a..b] per window."""
    table = []
    for start in range(0, len(rows), every):
        part = rows[start:start + every]
        table.append([steps, f"{part[0][0]}–{part[-1][0]}"]
                     + [max(row[i] for row in part) for i in range(3, len(part[0]))])
    return table


def run(flag_values) -> int:
    settings = settings_of(flag_values)
    if settings["buffer_size"] % NUM_CLASSES or settings["buffer_size"] < settings["batch_size"]:
        raise ValueError(f"--buffer_size={settings['buffer_size']} must be a multiple of {NUM_CLASSES} (the "
                         f"reference's check) and at least --batch_size={settings['batch_size']}.")
    output_dir = flag_values.output_dir or tempfile.mkdtemp(prefix="lockstep_reference_")
    os.makedirs(output_dir, exist_ok=True)
    initial = os.path.join(output_dir, "initial.pt")
    _worker(flag_values, "lockstep_init", os.path.join(output_dir, "official_init.log"), f"--output={initial}",
            f"--depth={settings['depth']}", f"--width={settings['width']}",
            f"--buffer_size={settings['buffer_size']}", f"--seed={settings['seed']}")

    import tensorflow as tf  # noqa: PLC0415

    from trainers import from_reference  # noqa: PLC0415

    try:
        tf.config.threading.set_intra_op_parallelism_threads(flag_values.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already running (called in-process, e.g. by a test): its threads stay
        pass
    workdir = os.path.join(output_dir, "jem_tf_workdir")
    from_reference.import_checkpoint(initial, "cifar10", workdir)
    model, _ = build_jem(workdir, settings)
    batches = make_batches(settings["steps"], settings["batch_size"], settings["seed"])
    ours, script = run_ours(model, batches, settings)
    if flag_values.ours == "compiled":
        model, _ = build_jem(workdir, settings)
        ours = run_ours_compiled(model, batches, script, settings)
    script_path = os.path.join(output_dir, "script.npz")
    np.savez(script_path, **script)
    official, official64 = None, None
    for precision in ("float32", "float64") if flag_values.float64_control else ("float32",):
        result_path = os.path.join(output_dir, f"official_{precision}.npz")
        _worker(flag_values, "lockstep", os.path.join(output_dir, f"official_lockstep_{precision}.log"),
                f"--script={script_path}", f"--load_path={initial}", f"--output={result_path}",
                *(["--float64"] if precision == "float64" else []))
        with np.load(result_path) as arrays:
            result = {key: arrays[key] for key in arrays.files}
        official, official64 = (result, None) if precision == "float32" else (official, result)
    rows, buffer_difference = compare(ours, official, official64)
    print(format_table(rows))
    worst = {name: max(row[3 + i] for row in rows) for i, name in enumerate(COMPARED)}
    worst["buffer"] = buffer_difference
    agree = all(value <= flag_values.tolerance for value in worst.values())
    print(f"\nFinal replay buffer: max abs diff {buffer_difference:.2e}.")
    print(f"{settings['steps']} steps of jem_tf's {flag_values.ours} step, "
          f"WRN-{settings['depth']}-{settings['width']}, batch {settings['batch_size']}, "
          f"torch {official['torch_version']}: largest differences "
          + ", ".join(f"{name} {value:.2e}" for name, value in worst.items())
          + (f": within --tolerance={flag_values.tolerance:g}." if agree
             else f": BEYOND --tolerance={flag_values.tolerance:g}."))
    control = None
    if official64 is not None:
        control = {name: max(row[len(COLUMNS) + i] for row in rows) for i, name in enumerate(CONTROL)}
        print("Against the same steps in float64, largest differences: "
              + ", ".join(f"{name} {value:.2e}" for name, value in control.items()) + ".")
    summary = dict(settings=settings, ours=flag_values.ours, worst=worst, control=control, agree=agree,
                   tolerance=flag_values.tolerance, torch=str(official["torch_version"]),
                   columns=COLUMNS + (CONTROL if control else []), per_step=rows)
    with open(os.path.join(output_dir, "lockstep_reference.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if flag_values.results_json:
        write_results(flag_values, summary)
    return 0 if agree else EXIT_DIFFERENT


def write_results(flag_values, summary) -> None:
    """docs/results/NAME.json: rows of windows of steps (the largest differences in each), every step
    in `per_step`; runs of other --steps with the same settings already there are kept."""
    from benchmarks import results_json  # noqa: PLC0415
    from tools import results_tables  # noqa: PLC0415

    settings = summary["settings"]
    same_but_steps = {key: value for key, value in settings.items() if key != "steps"}
    runs = {}
    if (results_tables.RESULTS / f"{flag_values.results_json}.json").is_file():
        old = results_tables.load(flag_values.results_json).get("per_step", {})
        runs = {steps: run for steps, run in old.items()
                if {k: v for k, v in run.get("settings", {}).items() if k != "steps"} == same_but_steps}
    runs[str(settings["steps"])] = dict(settings=settings, columns=summary["columns"], rows=summary["per_step"],
                                        final_buffer=summary["worst"]["buffer"], agree=summary["agree"],
                                        tolerance=summary["tolerance"], torch=summary["torch"])
    runs = dict(sorted(runs.items(), key=lambda item: int(item[0])))
    control = bool(summary["control"])
    table = dict(
        results_json.provenance(results_json.command_line(
            "benchmarks.lockstep_reference", flag_values, leave_out=("reference_dir", "torch_python", "output_dir",
                                                                     "results_json"))),
        columns=["steps compared", "steps", "max abs diff: loss", "logits", "samples", "weights"]
        + (CONTROL if control else []),
        align=["r", "l"] + ["r"] * (4 + (len(CONTROL) if control else 0)),
        formats=[None, None] + ["{:.1e}"] * (4 + (len(CONTROL) if control else 0)),
        rows=windows(summary["per_step"], flag_values.report_every, settings["steps"]),
        notes=[f"jem_tf's {settings['ours']} training step against the official code's `main()`, from the same "
               f"weights and buffer on the same batches and draws: WRN-{settings['depth']}-{settings['width']}, "
               f"batch {settings['batch_size']}, buffer {settings['buffer_size']}, {settings['sgld_steps']} SGLD "
               f"steps of {settings['sgld_step_size']:g} with noise {settings['sgld_noise']:g}, re-initialisation "
               f"{settings['reinit_freq']:g}, Adam {settings['learning_rate']:g} with {settings['warmup_steps']} "
               f"warm-up steps, seed {settings['seed']}; float32 on CPU, torch {summary['torch']}. Each row: the "
               "largest difference over its steps (every step: `per_step` in the JSON)"
               + ("; the last columns: each float32 run against the official steps recomputed in float64 from "
                  "the same start (what float32 rounding alone does)" if control else "")
               + ". Final replay buffer: "
               + "; ".join(f"{steps} steps {run['final_buffer']:.1e}" for steps, run in runs.items()) + ". "
               + ("Every value within the tolerance of "
                  if all(run["agree"] for run in runs.values()) else "Some values beyond the tolerance of ")
               + f"{summary['tolerance']:g}."],
        per_step=runs,
    )
    same_settings = len(runs) > 1
    path = results_json.write(flag_values.results_json, table, key_columns=1 if same_settings else None)
    print(f"Wrote {path}.")


def main(argv, flag_values=flags.FLAGS):
    if len(argv) > 1:
        logging.error("Unexpected arguments %s; all options are --flags.", argv[1:])
        return EXIT_BAD_INPUT
    for name in ("reference_dir", "torch_python"):
        if not flag_values[name].value:
            logging.error("--%s is required (python -m benchmarks.lockstep_reference --help).", name)
            return EXIT_BAD_INPUT
    if not os.path.isfile(os.path.join(flag_values.reference_dir, "train_wrn_ebm.py")):
        logging.error("--reference_dir=%s has no train_wrn_ebm.py: pass a checkout of github.com/wgrathwohl/JEM.",
                      flag_values.reference_dir)
        return EXIT_BAD_INPUT
    try:
        probe = subprocess.run([flag_values.torch_python, "-c", "import torch, numpy"], capture_output=True,
                               timeout=300)
    except (OSError, subprocess.SubprocessError) as error:
        logging.error("--torch_python=%s cannot be run: %s", flag_values.torch_python, error)
        return EXIT_BAD_INPUT
    if probe.returncode:
        logging.error("--torch_python=%s cannot import torch and numpy.", flag_values.torch_python)
        return EXIT_BAD_INPUT
    try:
        return run(flag_values)
    except ValueError as error:
        logging.error("%s", error)
        return EXIT_BAD_INPUT
    except SideFailed as error:
        logging.error("%s", error)
        return EXIT_DIFFERENT


if __name__ == "__main__":
    define_flags()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(lambda argv: sys.exit(main(argv)))
