"""Checks the export direction of the reference port: jem_tf weights -> the reference's state dict.

Run with the separate torch environment (torch is never a dependency of jem_tf):

    /work/venv-torch/bin/python tools/check_reference_export.py --reference_dir=/work/ref/JEM

For each architecture it (1) runs jem_tf in --jem_python: builds a seeded WideResNet, converts it with
`export.reference_state_dict.to_reference_state_dict`, and saves that state dict and the network's logits,
log p~(x) and input gradient on fixed inputs; (2) loads the state dict into the reference's own `CCF`
(train_wrn_ebm.py, imported from --reference_dir) with strict `load_state_dict`, and compares its
outputs with jem_tf's. Prints one row per architecture; exits 1 if any relative difference exceeds
--tolerance. (tests/test_from_reference.py checks the other direction and the state dict layout in CI.)
"""

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reference_fixtures import import_reference, reference_outputs  # noqa: E402

JEM_SIDE = textwrap.dedent("""
    import sys
    import keras
    import numpy as np
    import tensorflow as tf
    from export import reference_state_dict
    from jem_tf import energy
    from jem_tf.models import WideResNet

    depth, width, norm, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    keras.utils.set_random_seed(5)
    network = WideResNet(depth=depth, width=width, num_classes=10, norm=norm)
    network.build((None, 32, 32, 3))
    for layer in network._flatten_layers():
        if hasattr(layer, "moving_variance"):  # non-trivial running statistics
            layer.moving_mean.assign(tf.random.normal(layer.moving_mean.shape, stddev=0.1))
            layer.moving_variance.assign(tf.random.uniform(layer.moving_variance.shape, 0.5, 2.0))
    np.savez(f"{out_dir}/state.npz", **reference_state_dict.to_reference_state_dict(network))
    images = tf.random.stateless_uniform((4, 32, 32, 3), seed=[1, 2], minval=-1, maxval=1)
    logits = network(images, training=False)
    log_px, score = energy.log_density_and_score(
        energy.marginal_log_density(lambda x: network(x, training=False)), images)
    np.savez(f"{out_dir}/ours.npz", inputs=np.transpose(images.numpy(), (0, 3, 1, 2)), logits=logits.numpy(),
             log_px=log_px.numpy(), input_gradient=np.transpose(score.numpy(), (0, 3, 1, 2)))
""")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference_dir", required=True, help="checkout of github.com/wgrathwohl/JEM (3d01161)")
    parser.add_argument("--jem_python", default="python", help="a Python with jem_tf's requirements (TensorFlow)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest max|diff|/max|reference| accepted")
    args = parser.parse_args()
    reference = import_reference(args.reference_dir)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    worst = 0.0
    print(f"{'architecture':<18}{'logits':>12}{'log p~(x)':>12}{'input grad':>12}")
    for depth, width, norm in ((10, 2, "none"), (16, 2, "batch")):
        with tempfile.TemporaryDirectory() as out_dir:
            subprocess.run([args.jem_python, "-c", JEM_SIDE, str(depth), str(width), norm, out_dir], check=True,
                           cwd=repo, env=dict(os.environ, PYTHONPATH=repo, TF_CPP_MIN_LOG_LEVEL="3"),
                           stderr=subprocess.DEVNULL)
            state = {k: torch.from_numpy(np.array(v)) for k, v in np.load(f"{out_dir}/state.npz").items()}
            ours = dict(np.load(f"{out_dir}/ours.npz"))
        model = reference.CCF(depth=depth, width=width, norm=None if norm == "none" else norm, n_classes=10)
        model.load_state_dict(state, strict=True)
        theirs = reference_outputs(model, torch.from_numpy(ours["inputs"]))
        errors = [np.max(np.abs(ours[k] - theirs[k])) / np.max(np.abs(theirs[k]))
                  for k in ("logits", "log_px", "input_gradient")]
        worst = max(worst, *errors)
        print(f"WRN-{depth}-{width} {norm:<8}" + "".join(f"{e:>12.2e}" for e in errors))
    print(f"worst relative difference {worst:.2e} (tolerance {args.tolerance:g})")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
