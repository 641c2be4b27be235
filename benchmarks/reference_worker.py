"""Runs the official PyTorch JEM code (github.com/wgrathwohl/JEM) from a checkout, for the comparison tools.

Started by `benchmarks.compare_reference` and `benchmarks.compare_training` with a Python that has
torch (torch is never a dependency of jem_tf); it needs only torch, numpy and the standard library.
Nothing of the reference is copied here: its `train_wrn_ebm.py` is imported from `--reference_dir` at
run time and its functions are called.

    PYTHON_WITH_TORCH benchmarks/reference_worker.py time  --reference_dir=DIR --depth=16 --width=2 ...
    PYTHON_WITH_TORCH benchmarks/reference_worker.py train --reference_dir=DIR --data=IMAGES.npz ...
    PYTHON_WITH_TORCH benchmarks/reference_worker.py lockstep --reference_dir=DIR --script=S.npz --load_path=P.pt ...

`train_wrn_ebm.py` imports torchvision and tqdm at the top. Only its model, sampler and training loop
are used, so where those packages are missing (torchvision has no wheel matching every torch)
`install_stand_ins` puts minimal modules in their place: tqdm passes the iterable through (and can
stop the loop after a number of steps, since the reference has no step cap); torchvision offers
`utils.save_image` (a no-op: no image files are wanted), the transforms the reference's `get_data`
composes (reflect pad, random crop, horizontal flip, to-tensor, normalise), applied to uint8 HWC
arrays, and a `datasets.CIFAR10` that serves the images of an .npz file written by the caller
(so both implementations train on the same images in the same order).

`time`: builds the reference's model, replay buffer (`get_model_and_buffer`) and sampler
(`get_sample_q`), then answers JSON lines on stdin ({"samples": k} times k iterations; {"exit": true}
ends), each with wall and CPU seconds, the in-loop `sample_q` seconds and the machine's other load.
`train`: runs the reference's own `main()` and parses the losses it prints into curves (JSON).
`lockstep_init` / `lockstep` (for `benchmarks.lockstep_reference`): the reference's initial weights and
buffer saved by its own `checkpoint()`; then its own `main()` from that file on scripted batches and
random draws, recording every step's loss, logits, samples and weights (`run_lockstep`).
"""

import argparse
import importlib.machinery
import json
import os
import re
import sys
import tempfile
import time
import types

if __package__ in (None, ""):  # run as a script by a Python that cannot import jem_tf
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import machine_load  # noqa: E402


class StopTraining(Exception):
    """Raised by the stand-in tqdm when the requested number of training steps has run."""


class _StepBudget:
    """Shared by every stand-in tqdm: how many loop iterations have been handed out, and the cap;
    `before_step(k)`, when set, is called before iteration k is handed out (and before the cap is
    checked), i.e. once iteration k - 1 has finished (lockstep: it records that iteration's state)."""

    max_steps = None
    handed_out = 0
    before_step = None


def _module(name: str) -> types.ModuleType:
    """An empty module with a spec (torch looks stand-ins up with importlib.util.find_spec)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    return module


def _stand_in_tqdm(iterable=None, *args, **kwargs):
    del args, kwargs

    def iterate():
        for item in iterable:
            if _StepBudget.before_step is not None:
                _StepBudget.before_step(_StepBudget.handed_out)
            if _StepBudget.max_steps is not None and _StepBudget.handed_out >= _StepBudget.max_steps:
                raise StopTraining()
            _StepBudget.handed_out += 1
            yield item

    return iterate()


def _stand_in_torchvision():
    """torchvision.{transforms, datasets, utils} with only what train_wrn_ebm.py uses."""
    import numpy as np
    import torch

    transforms = _module("torchvision.transforms")

    class Compose:
        def __init__(self, functions):
            self.functions = list(functions)

        def __call__(self, x):
            for function in self.functions:
                x = function(x)
            return x

    class Pad:  # on uint8 HWC arrays, as torchvision's on PIL images
        def __init__(self, padding, padding_mode="constant"):
            self.padding, self.mode = int(padding), {"reflect": "reflect", "constant": "constant"}[padding_mode]

        def __call__(self, image):
            p = self.padding
            return np.pad(image, ((p, p), (p, p), (0, 0)), mode=self.mode)

    class RandomCrop:
        def __init__(self, size):
            self.size = int(size)

        def __call__(self, image):
            top = int(torch.randint(0, image.shape[0] - self.size + 1, ()))
            left = int(torch.randint(0, image.shape[1] - self.size + 1, ()))
            return image[top:top + self.size, left:left + self.size]

    class RandomHorizontalFlip:
        def __init__(self, p=0.5):
            self.p = p

        def __call__(self, image):
            return image[:, ::-1] if float(torch.rand(())) < self.p else image

    class ToTensor:  # uint8 HWC in [0, 255] -> float CHW in [0, 1]
        def __call__(self, image):
            return torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1).copy()).float() / 255.0

    class Normalize:
        def __init__(self, mean, std):
            self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
            self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

        def __call__(self, x):
            return (x - self.mean) / self.std

    for cls in (Compose, Pad, RandomCrop, RandomHorizontalFlip, ToTensor, Normalize):
        setattr(transforms, cls.__name__, cls)

    datasets = _module("torchvision.datasets")

    class NpzImages(torch.utils.data.Dataset):
        """`root`/train.npz or test.npz: images uint8 [N, H, W, C], labels int [N]."""

        def __init__(self, root, transform=None, download=False, train=True, split=None):
            del download
            name = "train" if (train if split is None else split == "train") else "test"
            with np.load(os.path.join(root, f"{name}.npz")) as arrays:
                self.images, self.labels = arrays["images"], arrays["labels"].astype(np.int64)
            self.transform = transform

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, index):
            image = self.images[index]
            return (self.transform(image) if self.transform else image), int(self.labels[index])

    datasets.CIFAR10 = datasets.CIFAR100 = datasets.SVHN = NpzImages

    utils = _module("torchvision.utils")
    utils.save_image = lambda *args, **kwargs: None

    torchvision = _module("torchvision")
    torchvision.transforms, torchvision.datasets, torchvision.utils = transforms, datasets, utils
    torchvision.__stand_in__ = True
    return {"torchvision": torchvision, "torchvision.transforms": transforms, "torchvision.datasets": datasets,
            "torchvision.utils": utils}


def install_stand_ins(force_torchvision: bool = False) -> list:
    """Puts stand-ins for tqdm and torchvision into sys.modules (torchvision also when it is installed
    but `force_torchvision`: the training comparison needs the .npz dataset). Returns their names."""
    installed = []
    tqdm = _module("tqdm")
    tqdm.tqdm = _stand_in_tqdm
    sys.modules["tqdm"] = tqdm  # always: the step cap lives in it
    installed.append("tqdm")
    try:
        if force_torchvision:
            raise ImportError
        import torchvision  # noqa: F401
    except ImportError:
        sys.modules.update(_stand_in_torchvision())
        installed.append("torchvision")
    return installed


def import_reference(reference_dir: str):
    """The reference's train_wrn_ebm module, imported from the checkout."""
    path = os.path.abspath(reference_dir)
    if not os.path.isfile(os.path.join(path, "train_wrn_ebm.py")):
        raise FileNotFoundError(f"--reference_dir={reference_dir!r} has no train_wrn_ebm.py: pass a checkout of "
                                "github.com/wgrathwohl/JEM.")
    sys.path.insert(0, path)
    import train_wrn_ebm

    return train_wrn_ebm


def reference_args(**overrides) -> argparse.Namespace:
    """The arguments of the reference's `main()`: its argparse defaults (train_wrn_ebm.py's
    `__main__` block, which cannot be imported), then `overrides`."""
    defaults = dict(
        dataset="cifar10", data_root="../data", lr=1e-4, decay_epochs=[160, 180], decay_rate=0.3, clf_only=False,
        labels_per_class=-1, optimizer="adam", batch_size=64, n_epochs=200, warmup_iters=-1, p_x_weight=1.0,
        p_y_given_x_weight=1.0, p_x_y_weight=0.0, dropout_rate=0.0, sigma=3e-2, weight_decay=0.0, norm=None,
        n_steps=20, width=10, depth=28, uncond=False, class_cond_p_x_sample=False, buffer_size=10000,
        reinit_freq=0.05, sgld_lr=1.0, sgld_std=1e-2, save_dir="./experiment", ckpt_every=10, eval_every=1,
        print_every=100, load_path=None, print_to_log=False, plot_cond=False, plot_uncond=False, n_valid=5000,
    )
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"Not arguments of the reference's main(): {sorted(unknown)}")
    defaults.update(overrides)
    args = argparse.Namespace(**defaults)
    args.n_classes = 100 if args.dataset == "cifar100" else 10
    return args


# ------------------------------------------------------------------------------------------------
# time


def build_iteration(reference, args):
    """One training iteration of the reference for `args` (p(x) and p(y|x) terms, unconditional
    samples: its defaults), and the seconds its `sample_q` took inside it.

    The loop body is inline in the reference's `main()`, so its few lines are restated here, each
    calling the reference's own objects: `get_sample_q`, `get_model_and_buffer`, the model `f`
    (`f(x)` = logsumexp of the logits, `f.classify`), its Adam settings, and its divergence check.
    """
    import torch
    import torch.nn as nn

    device = torch.device("cpu")
    sample_q = reference.get_sample_q(args, device)
    f, replay_buffer = reference.get_model_and_buffer(args, device, sample_q)
    optim = torch.optim.Adam(f.parameters(), lr=args.lr, betas=[.9, .999], weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, reference.n_ch, reference.im_sz, reference.im_sz)
    x_p_d = torch.rand(shape, generator=generator) * 2 - 1
    x_lab = torch.rand(shape, generator=generator) * 2 - 1
    y_lab = torch.randint(0, args.n_classes, (args.batch_size,), generator=generator)

    def iteration():
        start = time.perf_counter()
        x_q = sample_q(f, replay_buffer)
        sgld_seconds = time.perf_counter() - start
        fp, fq = f(x_p_d).mean(), f(x_q).mean()
        loss = args.p_x_weight * -(fp - fq)
        loss = loss + args.p_y_given_x_weight * nn.CrossEntropyLoss()(f.classify(x_lab), y_lab)
        if loss.abs().item() > 1e8:
            raise FloatingPointError("the reference's divergence check fired")
        optim.zero_grad()
        loss.backward()
        optim.step()
        return sgld_seconds

    return iteration


def serve_timing(args, threads: int, warmup: int, protocol) -> None:
    import torch

    torch.set_num_threads(threads)
    reference = import_reference(args.reference_dir)
    iteration = build_iteration(reference, reference_args(
        depth=args.depth, width=args.width, batch_size=args.batch_size, n_steps=args.sgld_steps))
    for _ in range(warmup):
        iteration()
    _send(protocol, dict(ready=True, torch=torch.__version__, threads=torch.get_num_threads(),
                         stand_ins=args.stand_ins))
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("exit"):
            break
        samples = []
        for _ in range(int(request["samples"])):
            sample = machine_load.measure(iteration)
            sgld_seconds = sample.pop("result")
            samples.append(dict(sample, sgld_step_seconds=sgld_seconds / args.sgld_steps))
        _send(protocol, dict(samples=samples))


def _send(protocol, message) -> None:
    protocol.write(json.dumps(message) + "\n")
    protocol.flush()


# ------------------------------------------------------------------------------------------------
# train

_PX_LINE = re.compile(r"P\(x\) \| (\d+):(\d+) f\(x_p_d\)=\s*(\S+) f\(x_q\)=\s*(\S+) d=\s*(\S+)")
_PYX_LINE = re.compile(r"P\(y\|x\) (\d+):(\d+) loss=\s*(\S+), acc=\s*(\S+)")
_EPOCH_LINE = re.compile(r"Epoch (\d+): (Valid|Test) Loss (\S+), (?:Valid|Test) Acc (\S+)")


def parse_training_output(lines) -> dict:
    """The reference's printed progress -> curves {step: {log_px_data, log_px_samples, xent, accuracy}}
    (step = updates done before the batch) and per-epoch validation / test results."""
    curves, epochs, pending = {}, [], None
    for line in lines:
        if match := _PX_LINE.search(line):
            pending = dict(log_px_data=float(match.group(3)), log_px_samples=float(match.group(4)))
        elif match := _PYX_LINE.search(line):
            point = dict(pending or {}, xent=float(match.group(3)), accuracy=float(match.group(4)))
            curves[int(match.group(2))] = point
            pending = None
        elif match := _EPOCH_LINE.search(line):
            epochs.append(dict(epoch=int(match.group(1)), split=match.group(2).lower(),
                               xent=float(match.group(3)), accuracy=float(match.group(4))))
    return dict(curves=curves, epochs=epochs)


class _LineTee:
    """A stdout that keeps every printed line (to parse) and passes it on to a stream."""

    def __init__(self, stream):
        self.stream, self.lines, self._partial = stream, [], ""

    def write(self, text):
        self.stream.write(text)
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        self.lines.extend(complete)
        return len(text)

    def flush(self):
        self.stream.flush()


def run_training(args) -> dict:
    """The reference's `main()` for `--steps` iterations on the .npz images; its printed curves,
    its test accuracy at the end (its own `eval_classification`), and whether it diverged."""
    import torch

    torch.set_num_threads(args.threads)
    if args.fp32_convolutions:
        # PyTorch runs float32 convolutions on cuDNN in TF32 (10-bit mantissa) by default on Ampere and
        # newer GPUs; jem_tf on CPU computes in float32 (docs/reference.md, "Remaining differences in training").
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    reference = import_reference(args.reference_dir)
    _StepBudget.max_steps, _StepBudget.handed_out = args.steps, 0
    captured = {}
    original_get_data, original_get_model = reference.get_data, reference.get_model_and_buffer

    def get_data(*a, **k):
        captured["loaders"] = original_get_data(*a, **k)
        return captured["loaders"]

    def get_model_and_buffer(*a, **k):
        captured["f"], buffer = original_get_model(*a, **k)
        return captured["f"], buffer

    # Wrapped, not changed: to reach the model and the test loader once main() stops.
    reference.get_data, reference.get_model_and_buffer = get_data, get_model_and_buffer
    # In-process data loading: the loaders' worker processes would only compete for the cores.
    original_loader = reference.DataLoader
    reference.DataLoader = lambda *a, **k: original_loader(*a, **dict(k, num_workers=0))
    # main() seeds torch with the module's global `seed`.
    reference.seed = args.seed
    save_dir = tempfile.mkdtemp(prefix="reference_run_")
    main_args = reference_args(
        dataset=args.dataset, data_root=args.data_dir, lr=args.lr, batch_size=args.batch_size, n_epochs=10**6,
        warmup_iters=args.warmup_iters, n_steps=args.sgld_steps, width=args.width, depth=args.depth,
        buffer_size=args.buffer_size, save_dir=save_dir, ckpt_every=10**6, print_every=1,
        n_valid=args.n_valid, sigma=args.data_noise)
    tee, previous_stdout = _LineTee(sys.stderr), sys.stdout
    sys.stdout, outcome, started = tee, dict(diverged=False), time.time()
    try:
        reference.main(main_args)
    except StopTraining:
        pass
    except ZeroDivisionError:  # the reference's `1/0` after "BAD BOIIIIIIIIII": |L| > 1e8
        outcome = dict(diverged=True, reason="|L| > 1e8 (the reference's own check)",
                       step=_StepBudget.handed_out - 1)
    finally:
        sys.stdout = previous_stdout
    parsed = parse_training_output(tee.lines)
    result = dict(parsed, **outcome, steps=_StepBudget.handed_out, seconds=round(time.time() - started, 1),
                  torch=torch.__version__)
    device = next(captured["f"].parameters()).device if "f" in captured else torch.device("cpu")
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":  # what precision the convolutions ran in
        result["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    if not outcome["diverged"]:
        f = captured["f"]
        f.eval()
        with torch.no_grad():
            # The reference's main() puts the model on CUDA when there is one (a lent GPU machine).
            accuracy, xent = reference.eval_classification(f, captured["loaders"][3], next(f.parameters()).device)
        result.update(test_accuracy=float(accuracy), test_xent=float(xent))
    return result

# ------------------------------------------------------------------------------------------------
# lockstep (benchmarks.lockstep_reference)


def make_initial_checkpoint(args) -> None:
    """The reference's own initial state for a lockstep: its `get_model_and_buffer` (PyTorch's default
    initialisation, a U(-1, 1) buffer) after `torch.manual_seed(--seed)`, saved by its `checkpoint()`
    ({"model_state_dict", "replay_buffer"}) as --output; jem_tf imports that file."""
    import torch

    reference = import_reference(args.reference_dir)
    torch.manual_seed(args.seed)
    save_dir = tempfile.mkdtemp(prefix="reference_lockstep_")
    main_args = reference_args(depth=args.depth, width=args.width, buffer_size=args.buffer_size, save_dir=save_dir)
    device = torch.device("cpu")
    f, replay_buffer = reference.get_model_and_buffer(main_args, device, reference.get_sample_q(main_args, device))
    reference.checkpoint(f, replay_buffer, "lockstep_initial.pt", main_args, device)
    os.replace(os.path.join(save_dir, "lockstep_initial.pt"), args.output)


class _ScriptedTorch(types.ModuleType):
    """The reference module's `t` (torch) with its random draws replaced by a script: `randint` gives
    the step's buffer slots, `rand` numbers below `reinit_freq` exactly where a chain is re-initialised,
    `randn_like` the step's SGLD noise in order (zeros when the script has none), and `optim.Adam`
    records the optimizer it makes. Everything else is torch's own."""

    def __init__(self, torch, script, captured):
        super().__init__("torch")
        self._torch, self._script, self._captured = torch, script, captured
        self.step, self.noise_index = 0, 0

        class Adam(torch.optim.Adam):
            def __init__(inner, *a, **k):
                super().__init__(*a, **k)
                captured["optim"] = inner

        self.optim = types.SimpleNamespace(Adam=Adam, SGD=torch.optim.SGD)

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def randint(self, low, high, size, *args, **kwargs):
        slots = self._torch.from_numpy(self._script["slots"][self.step]).long()
        if tuple(size) != tuple(slots.shape) or int(slots.max()) >= high:
            raise ValueError(f"scripted buffer slots {tuple(slots.shape)} do not fit randint({low}, {high}, {size})")
        return slots

    def rand(self, *size, **kwargs):
        reinit = self._script["reinit"][self.step]
        return self._torch.from_numpy(reinit.astype("float32")) * -1.0 + 1.0  # 0 (< reinit_freq) where re-initialised

    def randn_like(self, x, *args, **kwargs):
        noise = self._script.get("noise")
        if noise is None:
            return self._torch.zeros_like(x)
        value = self._torch.from_numpy(noise[self.step, self.noise_index])
        self.noise_index += 1
        if value.shape != x.shape:
            raise ValueError(f"scripted SGLD noise {tuple(value.shape)} for a chain batch {tuple(x.shape)}")
        return value


def run_lockstep(args) -> dict:
    """The reference's own `main()` for the steps of --script (an .npz written by
    benchmarks.lockstep_reference), from --load_path, with every random choice taken from the script:
    the batches (its `get_data` is replaced by iterators over the script's x_p_d and (x_lab, y_lab)),
    the buffer slots, re-initialisations and fresh chains, and the SGLD noise (`_ScriptedTorch`). Its
    loop runs unchanged: warm-up, SGLD from the buffer, the loss, Adam, the buffer write-back.

    Recorded per step k, as numpy: `loss` (the value `L.backward()` is called on), `lr` (its Adam's rate
    for the step), the logits of x_p_d, x_q and x_lab (the last three `f.classify` calls of the step,
    in main()'s order), the samples x_q, the weights after the step (flattened in state-dict order,
    the heads JEM does not use left out), and the buffer after the last step. With --float64 the same
    steps run in float64 from the same float32 start: how far float32 rounding alone moves the run."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    reference = import_reference(args.reference_dir)
    with np.load(args.script) as arrays:
        script = {key: arrays[key] for key in arrays.files}
    settings = json.loads(str(script.pop("settings")))
    if args.float64:  # the rounding control: the same steps in float64 (weights, buffer, batches, draws)
        torch.set_default_dtype(torch.float64)
        script = {key: value.astype(np.float64) if value.dtype == np.float32 else value
                  for key, value in script.items()}
    steps = int(script["slots"].shape[0])
    captured, calls, records = {}, [], {key: [] for key in ("loss", "lr", "logits_p_d", "logits_q", "logits_lab",
                                                            "samples", "weights")}
    scripted = _ScriptedTorch(torch, script, captured)
    reference.t = scripted
    reference.init_random = lambda main_args, bs: torch.from_numpy(script["fresh"][scripted.step])
    original_get_model = reference.get_model_and_buffer

    def get_model_and_buffer(*a, **k):
        f, buffer = original_get_model(*a, **k)
        buffer = buffer.to(torch.get_default_dtype())  # float32 as saved; float64 for the control
        captured["f"], captured["buffer"] = f, buffer
        classify = f.classify

        def recording_classify(x):
            logits = classify(x)
            calls.append((x.detach().numpy().copy(), logits.detach().numpy().copy()))
            del calls[:-3]
            return logits

        f.classify = recording_classify  # CCF.forward calls self.classify too
        return f, buffer

    def get_data(main_args):
        del main_args
        batches = [(torch.from_numpy(x), torch.zeros(len(x), dtype=torch.long)) for x in script["x_p_d"]]
        labelled = iter([(torch.from_numpy(x), torch.from_numpy(y).long())
                         for x, y in zip(script["x_lab"], script["y_lab"])])
        return batches + batches[-1:], labelled, [], []  # one more: the loop stops on asking for it

    skipped = ("energy_output.", "f.linear.")

    def before_step(k):
        if k > 0:  # iteration k - 1 has finished
            (_, logits_p_d), (samples, logits_q), (_, logits_lab) = calls
            records["logits_p_d"].append(logits_p_d)
            records["logits_q"].append(logits_q)
            records["logits_lab"].append(logits_lab)
            records["samples"].append(samples)
            records["lr"].append(float(captured["optim"].param_groups[0]["lr"]))
            state = captured["f"].state_dict()
            records["weights"].append(np.concatenate(
                [value.detach().numpy().ravel() for key, value in state.items() if not key.startswith(skipped)]))
            captured.setdefault("weight_keys", [key for key in state if not key.startswith(skipped)])
        calls.clear()
        scripted.step, scripted.noise_index = min(k, steps - 1), 0

    original_backward = torch.Tensor.backward

    def recording_backward(tensor, *a, **k):  # main()'s L.backward(): SGLD uses autograd.grad
        records["loss"].append(float(tensor.detach()))
        return original_backward(tensor, *a, **k)

    reference.get_model_and_buffer, reference.get_data = get_model_and_buffer, get_data
    _StepBudget.max_steps, _StepBudget.handed_out, _StepBudget.before_step = steps, 0, before_step
    torch.Tensor.backward = recording_backward
    main_args = reference_args(
        lr=settings["learning_rate"], batch_size=settings["batch_size"], n_epochs=1,
        warmup_iters=settings["warmup_steps"] if settings["warmup_steps"] > 0 else -1, sigma=0.0,
        n_steps=settings["sgld_steps"], width=settings["width"], depth=settings["depth"],
        buffer_size=settings["buffer_size"], reinit_freq=settings["reinit_freq"], sgld_lr=settings["sgld_step_size"],
        sgld_std=settings["sgld_noise"], save_dir=tempfile.mkdtemp(prefix="reference_lockstep_"), ckpt_every=10**6,
        print_every=10**9, load_path=args.load_path)
    try:
        reference.main(main_args)
    except StopTraining:
        pass
    else:
        raise RuntimeError("the reference's main() ended before the scripted steps were run")
    finally:
        torch.Tensor.backward = original_backward
        _StepBudget.before_step = None
    if len(records["loss"]) != steps:
        raise RuntimeError(f"recorded {len(records['loss'])} losses for {steps} steps")
    result = {key: np.asarray(values) for key, values in records.items()}
    result["buffer"] = captured["buffer"].numpy()
    result["weight_keys"] = np.asarray(captured["weight_keys"])
    np.savez(args.output, **result, torch_version=np.asarray(torch.__version__))
    return dict(steps=steps, torch=torch.__version__)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["time", "train", "lockstep_init", "lockstep"])
    parser.add_argument("--reference_dir", required=True)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--sgld_steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="time: untimed iterations first")
    parser.add_argument("--data_dir", help="train: folder with train.npz and test.npz")
    parser.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"],
                        help="train: the reference's dataset name, which sets its class count (10 or 100)")
    parser.add_argument("--steps", type=int, default=300, help="train: iterations")
    parser.add_argument("--seed", type=int, default=1, help="train: the reference's torch seed")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup_iters", type=int, default=-1)
    parser.add_argument("--buffer_size", type=int, default=10000)
    parser.add_argument("--n_valid", type=int, default=5000)
    parser.add_argument("--data_noise", type=float, default=3e-2)
    parser.add_argument("--output", help="train: write the result JSON here")
    parser.add_argument("--script", help="lockstep: the .npz of batches and random choices to replay")
    parser.add_argument("--load_path", help="lockstep: the initial checkpoint (lockstep_init's --output)")
    parser.add_argument("--float64", action="store_true",
                        help="lockstep: compute in float64 (the float32 rounding control)")
    parser.add_argument("--fp32_convolutions", action="store_true",
                        help="train on a GPU: turn off TF32 (cuDNN and matmul), which PyTorch uses by default")
    args = parser.parse_args(argv)
    # JSON answers go to the real stdout; anything the reference prints goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    args.stand_ins = install_stand_ins(force_torchvision=args.mode == "train")
    if args.mode == "time":
        serve_timing(args, args.threads, args.warmup, protocol)
        return 0
    if args.mode == "lockstep_init":
        make_initial_checkpoint(args)
        return 0
    if args.mode == "lockstep":
        _send(protocol, run_lockstep(args))
        return 0
    result = run_training(args)
    with open(args.output, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
