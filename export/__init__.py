"""Serving: SavedModel export for TensorFlow Serving, its contract, a client and a C++ check.

  export.signatures   the serving contract (signature names, input/output keys, value rules)
  export.savedmodel   export_run (a training run) and `python -m export.savedmodel`
  export.archive      export_model: writes a network as TF Serving's version directory, and its metadata
  export.serving_functions  the graph functions behind every signature (ServingFunctions)
  export.graph_checks       their in-graph input checks: a refused input fails with INVALID_ARGUMENT
  export.encoded_images     encoded images sized from their headers before decoding, and the decoder
  export.ood_threshold  the log p~(x) threshold behind `is_out_of_distribution`, from validation images
  export.client       requests built with tensorflow-serving-api, `python -m export.client`
  export.serving_check  builds and runs the C++ loader check (TF Serving's load and predict path)
  export.graph_audit  fails on Python-backed or unregistered ops anywhere in an export
  export.torch_checkpoint      reads the official PyTorch code's checkpoints without torch, running no pickled code
  export.reference_state_dict  its network's state dict <-> our WideResNet, both directions
                      (`python -m trainers.from_reference` imports such a checkpoint as a training run)
  export/serving/     deployment kit: models.config, docker command, REST and gRPC examples
"""
