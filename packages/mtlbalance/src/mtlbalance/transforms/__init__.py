"""Loss transforms (the loss level of balancing)."""

from .base import LossTransform
from .identity import Identity
from .log import Log

__all__ = ["Identity", "Log", "LossTransform"]
