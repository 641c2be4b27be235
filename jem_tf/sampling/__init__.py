"""SGLD sampling and the persistent replay buffer."""

from jem_tf.sampling.replay_buffer import ReplayBuffer
from jem_tf.sampling.sgld import compiled_sgld, sgld_sample

__all__ = ["ReplayBuffer", "compiled_sgld", "sgld_sample"]
