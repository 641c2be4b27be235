"""Writes the reference-checkpoint fixtures under tests/data/reference/ with the official JEM code.

Run with the separate torch environment (torch is never a dependency of jem_tf):

    /work/venv-torch/bin/python tools/make_reference_fixtures.py --reference_dir=/work/ref/JEM

The reference's own `CCF` model (train_wrn_ebm.py, imported from --reference_dir at run time, never
copied) is built with a fixed torch seed and saved the way the reference's `checkpoint()` saves it,
`{"model_state_dict": ..., "replay_buffer": ...}`, in both of torch's file formats:

- `wrn10x1_zip.pt`: the zip format (`torch.save`'s default since torch 1.6);
- `wrn10x1_legacy.pt`: the legacy format (`_use_new_zipfile_serialization=False`), which the 2019
  checkpoints of the paper use;
- `wrn10x1_batchnorm_zip.pt`: the same with `--norm batch`, its running statistics moved away from
  their initial values by a few training-mode passes.

For each checkpoint, `<name>_outputs.npz` holds fixed inputs (NCHW in [-1, 1]) and what the reference
computes on them in eval mode: `classify` logits, log p~(x) (`CCF.forward`, the logsumexp of the
logits) and the input gradient of sum log p~(x) (what its SGLD sampler follows). These are the oracle
of tests/test_from_reference.py. `state_dict_layouts.json` records the reference's key names and
shapes for a few architectures, the oracle for the export direction.

WRN-10-1 at 32x32 (the reference's average pool assumes 32x32 inputs) keeps each file under 400 kB.
"""

import argparse
import json
import os
import sys
import types

import numpy as np
import torch


def import_reference(reference_dir):
    """Imports the reference's train_wrn_ebm module for its F/CCF classes.

    It imports torchvision and tqdm at module level for its data pipeline, which the model classes do
    not use; empty stand-ins are registered when they are not installed.
    """
    sys.path.insert(0, os.path.abspath(reference_dir))
    for name in ("torchvision", "torchvision.transforms", "tqdm"):
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.tqdm = lambda iterable, *args, **kwargs: iterable
            sys.modules[name] = module
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    import train_wrn_ebm  # noqa: PLC0415

    return train_wrn_ebm


def reference_outputs(model, inputs):
    model.eval()
    x = inputs.clone().requires_grad_(True)
    logits = model.classify(x)
    log_px = model(x)
    (gradient,) = torch.autograd.grad(log_px.sum(), [x])
    return dict(
        inputs=inputs.numpy(), logits=logits.detach().numpy(), log_px=log_px.detach().numpy(),
        input_gradient=gradient.numpy(),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference_dir", required=True, help="checkout of github.com/wgrathwohl/JEM (3d01161)")
    parser.add_argument("--output_dir", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "reference"),
                        help="where the fixtures are written")
    parser.add_argument("--seed", type=int, default=11, help="torch seed for weights, buffer and inputs")
    args = parser.parse_args()
    reference = import_reference(args.reference_dir)
    os.makedirs(args.output_dir, exist_ok=True)
    torch.manual_seed(args.seed)

    inputs = torch.rand(4, 3, 32, 32) * 2 - 1
    for name, norm in (("wrn10x1", None), ("wrn10x1_batchnorm", "batch")):
        model = reference.CCF(depth=10, width=1, norm=norm, dropout_rate=0.0, n_classes=10)
        if norm == "batch":
            model.train()
            with torch.no_grad():
                for _ in range(3):
                    model.classify(torch.rand(16, 3, 32, 32) * 2 - 1)
        buffer = torch.FloatTensor(6, 3, 32, 32).uniform_(-1, 1)  # as the reference's init_random
        checkpoint = {"model_state_dict": model.state_dict(), "replay_buffer": buffer}
        torch.save(checkpoint, os.path.join(args.output_dir, f"{name}_zip.pt"))
        if norm is None:
            torch.save(checkpoint, os.path.join(args.output_dir, f"{name}_legacy.pt"),
                       _use_new_zipfile_serialization=False)
        np.savez(os.path.join(args.output_dir, f"{name}_outputs.npz"), **reference_outputs(model, inputs))

    layouts = {}
    for depth, width, norm in ((10, 1, None), (10, 2, None), (16, 2, "batch")):
        model = reference.CCF(depth=depth, width=width, norm=norm, n_classes=10)
        layouts[f"wrn{depth}x{width}_{norm or 'none'}"] = {k: list(v.shape) for k, v in model.state_dict().items()}
    with open(os.path.join(args.output_dir, "state_dict_layouts.json"), "w") as f:
        json.dump(layouts, f, indent=1)
    for entry in sorted(os.listdir(args.output_dir)):
        print(f"{entry}: {os.path.getsize(os.path.join(args.output_dir, entry))} bytes")


if __name__ == "__main__":
    main()
