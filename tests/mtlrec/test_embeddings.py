"""SparseEmbeddings: TorchRec and plain-torch backends agree; RecInputs contract; errors."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch

from mtlrec.data import Jagged
from mtlrec.models import RecInputs, SparseEmbeddings, random_inputs, torchrec_available

FEATURES = {"user": (50, 8), "item": (30, 4), "tags": (20, 3), "city": (5, 2)}

needs_torchrec = pytest.mark.skipif(not torchrec_available(), reason="torchrec is not installed")


def _inputs(n: int = 16, seed: int = 0) -> RecInputs:
    inputs = random_inputs(
        n, FEATURES, multi_hot={"tags": 4}, generator=torch.Generator().manual_seed(seed)
    )
    # make sure an empty bag and a long bag are present
    lengths = inputs.multi_hot["tags"].lengths.clone()
    lengths[0] = 0
    lengths[1] = 6
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    values = torch.randint(0, 20, (int(offsets[-1]),), generator=torch.Generator().manual_seed(9))
    inputs.multi_hot["tags"] = Jagged(offsets, values)
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
            bag = inputs.multi_hot[f]
            rows = [w[bag.values[a:b]].sum(0) for a, b in itertools.pairwise(bag.offsets)]
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
    assert inputs.dense.shape == (8, 0)  # no dense features: an empty (N, 0) matrix
    moved = inputs.to("cpu")
    assert moved is not inputs and torch.equal(moved.sparse["user"], inputs.sparse["user"])
    assert torch.equal(moved.multi_hot["tags"].values, inputs.multi_hot["tags"].values)
    dense = RecInputs(dense=torch.zeros(3, 2))
    assert dense.batch_size == 3
    # dense=None becomes (N, 0), N from the ids
    assert RecInputs(sparse={"a": torch.tensor([1, 2])}).dense.shape == (2, 0)
    bags = RecInputs(multi_hot={"m": Jagged(torch.tensor([0, 1, 1, 3]), torch.tensor([4, 5, 6]))})
    assert bags.batch_size == 3 and bags.dense.shape == (3, 0)
    with pytest.raises(ValueError, match=r"empty; pass dense=torch\.zeros"):
        RecInputs()
    with pytest.raises(ValueError, match=r"sparse feature 'b': expected shape \(2,\)"):
        RecInputs(sparse={"a": torch.tensor([1, 2]), "b": torch.tensor([1, 2, 3])}).validate()
    with pytest.raises(TypeError, match="'a': ids must be int64"):
        RecInputs(sparse={"a": torch.tensor([1.0, 2.0])}).validate()
    with pytest.raises(ValueError, match=r"'m': expected offsets of shape \(3,\)"):
        RecInputs(
            sparse={"a": torch.tensor([1, 2])},
            multi_hot={"m": Jagged(torch.tensor([0, 2]), torch.tensor([1, 2]))},
        ).validate()
    with pytest.raises(ValueError, match=r"'m': offsets must run from 0 to len\(values\) = 2"):
        RecInputs(multi_hot={"m": Jagged(torch.tensor([0, 1, 3]), torch.tensor([1, 2]))}).validate()
    with pytest.raises(ValueError, match="'m': offsets must never decrease"):
        RecInputs(
            multi_hot={"m": Jagged(torch.tensor([0, 2, 1, 2]), torch.tensor([1, 2]))}
        ).validate()
    with pytest.raises(TypeError, match=r"'m': expected a Jagged\(offsets, values\), got tuple"):
        RecInputs(
            sparse={"a": torch.tensor([1, 2])},
            multi_hot={"m": (torch.tensor([1, 2]), torch.tensor([0, 1, 2]))},  # type: ignore[dict-item]
        ).validate()
    with pytest.raises(ValueError, match=r"dense features: expected shape \(2, D\)"):
        RecInputs(sparse={"a": torch.tensor([1, 2])}, dense=torch.zeros(3, 1)).validate()
    with pytest.raises(TypeError, match="dense features must be floating point"):
        RecInputs(
            sparse={"a": torch.tensor([1, 2])}, dense=torch.zeros(2, 1, dtype=torch.int64)
        ).validate()


def test_rec_inputs_index_cat_and_pin_memory_keep_rows_aligned() -> None:
    inputs = random_inputs(
        10, FEATURES, dense_dim=2, multi_hot={"tags": 3}, generator=torch.Generator().manual_seed(4)
    )
    idx = torch.tensor([7, 2, 2, 9])
    sub = inputs.index(idx).validate()
    assert sub.batch_size == 4 and torch.equal(sub.dense, inputs.dense[idx])
    assert torch.equal(sub.sparse["user"], inputs.sparse["user"][idx])
    tags = inputs.multi_hot["tags"]
    for row, i in enumerate(idx.tolist()):
        a, b = sub.multi_hot["tags"].offsets[row : row + 2].tolist()
        lo, hi = tags.offsets[i : i + 2].tolist()
        assert sub.multi_hot["tags"].values[a:b].tolist() == tags.values[lo:hi].tolist()
    joined = RecInputs.cat([inputs.index(torch.arange(0, 6)), inputs.index(torch.arange(6, 10))])
    assert torch.equal(joined.multi_hot["tags"].offsets, tags.offsets)
    assert torch.equal(joined.multi_hot["tags"].values, tags.values)
    assert torch.equal(joined.dense, inputs.dense)
    if torch.cuda.is_available():  # pinning needs an accelerator
        pinned = inputs.pin_memory()
        assert pinned.dense.is_pinned() and pinned.multi_hot["tags"].values.is_pinned()
        assert torch.equal(pinned.sparse["item"], inputs.sparse["item"])


def test_embeddings_reject_tuple_bags_with_a_hint() -> None:
    emb = SparseEmbeddings({"m": (5, 2)}, "torch")
    bad = RecInputs(
        multi_hot={"m": Jagged(torch.tensor([0, 1]), torch.tensor([2]))}, dense=torch.zeros(1, 0)
    )
    bad.multi_hot["m"] = (torch.tensor([2]), torch.tensor([0, 1]))  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"'m'.*wrap a \(values, offsets\) pair as Jagged"):
        emb(bad)
