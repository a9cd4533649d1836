"""Gradient aggregators (the gradient level of balancing): every method class, and the base
classes a new method derives from. Helpers (solvers, ...) are private."""

from .aligned_mtl import AlignedMTL
from .base import (
    Aggregation,
    Aggregator,
    GradientAggregator,
    GramWeighting,
    LossWeighting,
    RepresentationWeighting,
    gram_matrix,
)
from .cagrad import CAGrad
from .excessmtl import ExcessMTL
from .fairgrad import FairGrad
from .famo import FAMO
from .graddrop import GradDrop
from .gradnorm import GradNorm
from .gradvac import GradVac
from .imtl_g import IMTLG
from .maxnorm import MaxNorm
from .metabalance import MetaBalance
from .mgda import MGDA
from .mgda_ub import MGDAUB
from .moco import MoCo
from .mtadam import MTAdam
from .nashmtl import NashMTL
from .pcgrad import PCGrad
from .stl import STL
from .sum import Sum
from .upgrad import UPGrad

__all__ = [
    "FAMO",
    "IMTLG",
    "MGDA",
    "MGDAUB",
    "STL",
    "Aggregation",
    "Aggregator",
    "AlignedMTL",
    "CAGrad",
    "ExcessMTL",
    "FairGrad",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "GradientAggregator",
    "GramWeighting",
    "LossWeighting",
    "MTAdam",
    "MaxNorm",
    "MetaBalance",
    "MoCo",
    "NashMTL",
    "PCGrad",
    "RepresentationWeighting",
    "Sum",
    "UPGrad",
    "gram_matrix",
]
