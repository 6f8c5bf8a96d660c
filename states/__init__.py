"""FeatureCloud states of the app; importing this package registers them with the engine."""
from states import kd  # noqa: F401  (registers the states)
from states.base import BOARD, PATHS

__all__ = ["BOARD", "PATHS"]
