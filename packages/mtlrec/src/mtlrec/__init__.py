"""mtlrec: multi-objective recommendation on mtlbalance — feature pipelines on polars
(:mod:`mtlrec.data`), embeddings through TorchRec or ``torch.nn.EmbeddingBag`` and the
standard multi-task ranking architectures (:mod:`mtlrec.models`)."""

from __future__ import annotations

__version__ = "0.1.0"
