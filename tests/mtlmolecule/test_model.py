"""The MPNN's shared edge-network evaluation computes PyG's NNConv model exactly."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.loader import DataLoader
from torch_geometric.nn import NNConv

from mtlmolecule.bench import qm9_problem
from mtlmolecule.model import MPNN, MPNNEncoder, SharedEdgeNNConv

from .conftest import random_molecules, write_cache


def _pyg_forward(encoder: MPNNEncoder, conv: NNConv, data: object) -> torch.Tensor:
    """PyG's examples/qm9_nn_conv.py forward: NNConv evaluates the edge network every round."""
    out = F.relu(encoder.lin0(data.x))  # type: ignore[attr-defined]
    h = out.unsqueeze(0)
    for _ in range(encoder.steps):
        m = F.relu(conv(out, data.edge_index, data.edge_attr))  # type: ignore[attr-defined]
        out, h = encoder.gru(m.unsqueeze(0), h)
        out = out.squeeze(0)
    return F.relu(encoder.lin1(encoder.set2set(out, data.batch)))  # type: ignore[attr-defined]


@pytest.mark.parametrize("width", [8, 16])
def test_shared_edge_weights_equal_nnconv(tmp_path: Path, width: int) -> None:
    cache = write_cache(tmp_path, random_molecules(40))
    problem = qm9_problem(data={"cache_dir": str(cache), "subset": 40, "seed": 1},
                          model={"width": width, "edge_hidden": 12})  # fmt: skip
    batch = next(iter(DataLoader(problem.train, batch_size=16)))
    torch.manual_seed(width)
    model = problem.make_model().double()
    assert isinstance(model, MPNN)
    assert isinstance(model.encoder.conv, SharedEdgeNNConv)
    batch.x, batch.edge_attr = batch.x.double(), batch.edge_attr.double()
    reference = copy.deepcopy(model.encoder)
    state = copy.deepcopy(reference.conv.state_dict())  # NNConv() re-initialises its edge net
    conv = NNConv(width, width, copy.deepcopy(reference.conv.nn), aggr="mean").double()
    conv.load_state_dict(state)
    theirs_params = {
        **{n: p for n, p in reference.named_parameters() if not n.startswith("conv.")},
        **{f"conv.{n}": p for n, p in conv.named_parameters()},
    }

    ours = model.encoder(batch)
    theirs = _pyg_forward(reference, conv, batch)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    unshared = copy.deepcopy(model.encoder)
    unshared.share_edge_weights = False  # recomputes the edge network every round
    torch.testing.assert_close(unshared(batch), theirs, rtol=1e-12, atol=1e-12)

    weight = torch.randn_like(ours)
    (ours * weight).sum().backward()
    (theirs * weight).sum().backward()
    ours_params = dict(model.encoder.named_parameters())
    assert ours_params.keys() == theirs_params.keys()  # same names: state dicts load either way
    for name, p in ours_params.items():
        q = theirs_params[name]
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    with pytest.raises(ValueError, match="share_edge_weights must be true or false"):
        qm9_problem(data={"cache_dir": str(cache)}, model={"share_edge_weights": "no"})
