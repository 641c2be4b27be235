"""Network architectures."""

from jem_tf.models.wide_resnet import WideResNet

__all__ = ["WideResNet"]
