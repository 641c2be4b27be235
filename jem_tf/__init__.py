"""jem_tf: Joint Energy-based Models (Grathwohl et al., ICLR 2020) in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
