"""Every objective: importing this module registers them all (trainers/registry.py).

The loop and the tools import this module to choose an objective by name; a new objective's
module is added to the import below.
"""

from trainers import classifier, jem, jempp  # noqa: F401 (imported to register their objectives)
from trainers.registry import build_model, get, names

__all__ = ["build_model", "get", "names"]
