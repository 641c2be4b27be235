"""Serving: SavedModel export for TensorFlow Serving, its contract, a client and a C++ check.

  export.signatures   the serving contract (signature names, input/output keys, value rules)
  export.savedmodel   export_model / export_run and `python -m export.savedmodel`
  export.client       requests built with tensorflow-serving-api, `python -m export.client`
  export.serving_check  builds and runs the C++ loader check (TF Serving's load and predict path)
  export.reference    what each signature must return, computed from the in-memory network
  export.graph_audit  fails on Python-backed or unregistered ops anywhere in an export
  export.torch_checkpoint      reads the official PyTorch code's checkpoints without torch or unpickling code
  export.reference_state_dict  its network's state dict <-> our WideResNet, both directions
                      (`python -m trainers.from_reference` imports such a checkpoint as a training run)
  export/serving/     deployment kit: models.config, docker command, REST and gRPC examples
"""
