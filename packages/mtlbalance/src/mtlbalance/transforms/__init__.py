"""Loss transforms (the loss level of balancing): every method class, and the base class a
new transform derives from."""

from .base import LossTransform
from .dwa import DWA
from .gls import GLS
from .identity import Identity
from .igbv2 import IGBv2
from .imtl_l import IMTLL
from .log import Log
from .rlw import RLW
from .stch import STCH
from .uw import UW

__all__ = ["DWA", "GLS", "IMTLL", "RLW", "STCH", "UW", "IGBv2", "Identity", "Log", "LossTransform"]
