"""Network architectures."""

from jem_tf.models.wide_resnet import WideResNet, network_arguments

__all__ = ["WideResNet", "network_arguments"]
