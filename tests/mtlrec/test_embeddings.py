"""SparseEmbeddings: TorchRec and plain-torch backends agree; RecInputs contract; errors."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch

from mtlrec.models import RecInputs, SparseEmbeddings, random_inputs, torchrec_available

FEATURES = {"user": (50, 8), "item": (30, 4), "tags": (20, 3), "city": (5, 2)}

needs_torchrec = pytest.mark.skipif(not torchrec_available(), reason="torchrec is not installed")


def _inputs(n: int = 16, seed: int = 0) -> RecInputs:
    inputs = random_inputs(
        n, FEATURES, multi_hot={"tags": 4}, generator=torch.Generator().manual_seed(seed)
    )
    # make sure an empty bag and a long bag are present
    values, offsets = inputs.multi_hot["tags"]
    lengths = offsets[1:] - offsets[:-1]
    lengths[0] = 0
    lengths[1] = 6
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    values = torch.randint(0, 20, (int(offsets[-1]),), generator=torch.Generator().manual_seed(9))
    inputs.multi_hot["tags"] = (values, offsets)
    return inputs.validate()


def _reference(emb: SparseEmbeddings, inputs: RecInputs) -> torch.Tensor:
    """Pooling written out by hand, from the tables."""
    tables = emb.tables()
    parts = []
    for f in FEATURES:
        w = tables[f]
        if f in inputs.sparse:
            parts.append(w[inputs.sparse[f]])
        else:
            values, offsets = inputs.multi_hot[f]
            rows = [w[values[a:b]].sum(0) for a, b in itertools.pairwise(offsets)]
            parts.append(torch.stack(rows))
    return torch.cat(parts, dim=1)


def test_torch_backend_pools_and_concatenates_in_config_order() -> None:
    torch.manual_seed(0)
    emb = SparseEmbeddings(FEATURES, "torch")
    inputs = _inputs()
    out = emb(inputs)
    assert out.shape == (16, sum(d for _, d in FEATURES.values()))
    torch.testing.assert_close(out, _reference(emb, inputs))
    assert torch.all(out[0, 12:15] == 0)  # the empty bag of 'tags' pools to zeros


@needs_torchrec
@pytest.mark.parametrize("direction", ["torch->torchrec", "torchrec->torch"])
def test_backends_give_identical_outputs_and_gradients(direction: str) -> None:
    torch.manual_seed(1)
    plain = SparseEmbeddings(FEATURES, "torch")
    torch.manual_seed(2)  # different weights: the copy is what makes them equal
    rec = SparseEmbeddings(FEATURES, "torchrec")
    assert rec.backend == "torchrec"
    inputs = _inputs()
    assert not torch.equal(plain(inputs), rec(inputs))
    src, dst = (plain, rec) if direction == "torch->torchrec" else (rec, plain)
    dst.copy_weights_from(src)

    out_plain, out_rec = plain(inputs), rec(inputs)
    assert torch.equal(out_plain, out_rec)
    upstream = torch.randn_like(out_plain)
    (out_plain * upstream).sum().backward()
    (out_rec * upstream).sum().backward()
    for f in FEATURES:
        g_plain, g_rec = plain.tables()[f].grad, rec.tables()[f].grad
        assert g_plain is not None and g_rec is not None
        assert g_plain.abs().sum() > 0
        torch.testing.assert_close(g_plain, g_rec, rtol=0, atol=1e-6)


@needs_torchrec
def test_same_seed_same_tables_on_both_backends_and_same_rng_after() -> None:
    torch.manual_seed(3)
    a = SparseEmbeddings(FEATURES, "torch")
    after_a = torch.rand(3)
    torch.manual_seed(3)
    b = SparseEmbeddings(FEATURES, "torchrec")
    after_b = torch.rand(3)
    for f in FEATURES:
        assert torch.equal(a.tables()[f], b.tables()[f])
    assert torch.equal(after_a, after_b)  # layers built next get the same weights too
    assert a.tables()["user"].std().item() == pytest.approx(0.05, rel=0.3)


@needs_torchrec
def test_to_backend_copies_weights() -> None:
    torch.manual_seed(4)
    rec = SparseEmbeddings(FEATURES, "torchrec")
    plain = rec.to_backend("torch")
    assert plain.backend == "torch"
    inputs = _inputs(seed=5)
    assert torch.equal(plain(inputs), rec(inputs))
    with torch.no_grad():
        rec.tables()["user"].add_(1.0)  # a copy, not shared storage
    assert not torch.equal(plain(inputs), rec(inputs))


def test_auto_backend_prefers_torchrec_when_it_imports() -> None:
    emb = SparseEmbeddings({"a": (3, 2)})
    assert emb.backend == ("torchrec" if torchrec_available() else "torch")


def test_mtlrec_works_without_torchrec() -> None:
    code = (
        "import sys; sys.modules['torchrec'] = None\n"
        "import torch\n"
        "from mtlrec.models import SparseEmbeddings, MMoE, random_inputs, torchrec_available\n"
        "assert not torchrec_available()\n"
        "e = SparseEmbeddings({'a': (5, 2)})\n"
        "assert e.backend == 'torch', e.backend\n"
        "m = MMoE({'a': (5, 2)}, ['x', 'y'])\n"
        "_, p = m(random_inputs(4, {'a': (5, 2)}))\n"
        "assert p['x'].shape == (4,)\n"
        "try:\n"
        "    SparseEmbeddings({'a': (5, 2)}, 'torchrec')\n"
        "except ImportError as e:\n"
        "    assert 'torchrec' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "ok" in run.stdout


@pytest.mark.parametrize(
    ("features", "backend", "match"),
    [
        ({"a": (5, 2)}, "faiss", "backend must be one of"),
        ({"a": (0, 2)}, "torch", "two positive ints"),
        ({"a": (5,)}, "torch", "two positive ints"),
        ({"a.b": (5, 2)}, "torch", "without '.'"),
    ],
)
def test_bad_config_errors(features: dict, backend: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SparseEmbeddings(features, backend)


@pytest.mark.parametrize("backend", ["torch", pytest.param("torchrec", marks=needs_torchrec)])
def test_bad_inputs_name_the_feature(backend: str) -> None:
    emb = SparseEmbeddings({"user": (5, 2), "item": (3, 2)}, backend)
    with pytest.raises(ValueError, match="no feature 'item'"):
        emb(RecInputs(sparse={"user": torch.tensor([0, 1])}))
    with pytest.raises(ValueError, match=r"'item': id 3 is outside its table \[0, 3\)"):
        emb(RecInputs(sparse={"user": torch.tensor([0, 1]), "item": torch.tensor([0, 3])}))
    with pytest.raises(ValueError, match=r"'user': id -1"):
        emb(RecInputs(sparse={"user": torch.tensor([-1, 1]), "item": torch.tensor([0, 2])}))


def test_copy_between_different_configs_is_refused() -> None:
    a = SparseEmbeddings({"a": (5, 2)}, "torch")
    b = SparseEmbeddings({"a": (6, 2)}, "torch")
    with pytest.raises(ValueError, match="feature configs differ"):
        a.copy_weights_from(b)


def test_rec_inputs_contract() -> None:
    inputs = _inputs(n=8)
    assert inputs.batch_size == len(inputs) == 8
    moved = inputs.to("cpu")
    assert moved is not inputs and torch.equal(moved.sparse["user"], inputs.sparse["user"])
    dense = RecInputs(dense=torch.zeros(3, 2))
    assert dense.batch_size == 3
    with pytest.raises(ValueError, match="empty"):
        _ = RecInputs().batch_size
    with pytest.raises(ValueError, match=r"sparse feature 'b': expected shape \(2,\)"):
        RecInputs(sparse={"a": torch.tensor([1, 2]), "b": torch.tensor([1, 2, 3])}).validate()
    with pytest.raises(TypeError, match="'a': ids must be int64"):
        RecInputs(sparse={"a": torch.tensor([1.0, 2.0])}).validate()
    with pytest.raises(ValueError, match=r"'m': expected 1-d values and offsets of shape \(3,\)"):
        RecInputs(
            sparse={"a": torch.tensor([1, 2])},
            multi_hot={"m": (torch.tensor([1, 2]), torch.tensor([0, 2]))},
        ).validate()
    with pytest.raises(ValueError, match=r"dense features: expected shape \(2, D\)"):
        RecInputs(sparse={"a": torch.tensor([1, 2])}, dense=torch.zeros(3, 1)).validate()
