"""A table described by a spec alone (mtlrec.bench:table): reading options (headerless,
", "-separated, "?" nulls), labels by named positive values, standardised regression targets
reported in their own units, multiclass tasks, and errors that say which key or row to fix.
Expected values are computed here by hand or with numpy/scikit-learn, not by the code."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, log_loss

from mtlbench.runner import build_problem, run_benchmark
from mtlbench.spec import parse_spec
from mtlrec.bench import table
from mtlrec.data import (
    DataError,
    FeatureSpec,
    FittedFeatures,
    Label,
    SparseFeature,
    read_table,
    scan_table,
)
from mtlrec.metrics import ClassMetric, make_task, task_loss
from mtlrec.models import MODELS, make_model, random_inputs

# A headerless, ", "-separated file with "?" for missing values: age, job, tags (multi-hot),
# rel (multiclass), hours (regression), income (string label).
LINES = [
    "39, State-gov, a|b, Husband, 40, <=50K",
    "50, Self-emp, b, Wife, 13, <=50K",
    "38, Private, ?, Husband, 40, >50K",
    "53, ?, a|c, Own-child, 40, <=50K",
    "28, Private, c, Wife, 40, >50K",
    "37, Private, a, Husband, 45, >50K",
    "49, Self-emp, b|c, Own-child, 16, <=50K",
    "52, State-gov, a, Husband, 45, >50K",
    "31, Private, ?, Wife, 50, >50K",
    "42, Private, b, Own-child, 40, <=50K",
]
NAMES = ["age", "job", "tags", "rel", "hours", "income"]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _data(path: Path, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "path": str(path),
        "split": [0.6, 0.2, 0.2],
        "split_seed": 0,
        "header": False,
        "names": NAMES,
        "nulls": ["?"],
        "columns": {
            "age": "dense",
            "job": "sparse",
            "tags": {"kind": "multi_hot", "separator": "|"},
            "rel": {"task": "rel", "kind": "multiclass"},
            "hours": {"task": "hours", "kind": "regression", "metrics": ["mae", "mse"]},
            "income": {"task": "income", "kind": "binary", "positive": [">50K"]},
        },
    }
    data.update(over)
    return data


MODEL = {"arch": "shared_bottom", "embedding_dim": 2, "bottom": [8], "tower": [4]}


# ------------------------------------------------------------------------------- reading
def test_scan_table_headerless_comma_space_with_null_tokens(tmp_path: Path) -> None:
    path = _write(tmp_path / "adult.data", LINES)
    df = scan_table(path, has_header=False, names=NAMES, null_values=["?"], trim=True).collect()
    assert [c for c in df.columns if not c.startswith("__")] == NAMES
    assert df["job"].to_list()[:4] == ["State-gov", "Self-emp", "Private", None]
    assert df["tags"][2] is None and df["income"][2] == ">50K"  # no leading space left
    default = scan_table(path, has_header=False, trim=True).collect()
    assert [c for c in default.columns if not c.startswith("__")] == [
        f"column_{i}" for i in range(1, 7)
    ]
    untrimmed = scan_table(path, has_header=False).collect()
    assert untrimmed["column_6"][0] == " <=50K"  # why trim is needed for ", " files


def test_scan_table_errors_name_the_fix(tmp_path: Path) -> None:
    path = _write(tmp_path / "adult.data", LINES)
    with pytest.raises(ValueError, match=r"separator=',' and trim=True"):
        scan_table(path, separator=", ", has_header=False)
    with pytest.raises(DataError, match=r"adult\.data: line 1: 5 column names given, but the "):
        scan_table(path, has_header=False, names=NAMES[:5])
    with pytest.raises(ValueError, match=r"unique; given twice: \['a'\]"):
        scan_table(path, has_header=False, names=["a", "a", "b", "c", "d", "e"])
    with pytest.raises(FileNotFoundError, match="current directory"):
        scan_table(tmp_path / "nope.csv")


def test_read_table_header_file_with_spaces_and_nulls(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", ["u, y", "a , 1", " ?, 0", "b,1"])
    spec = FeatureSpec(sparse=[SparseFeature("u")], labels=[Label("y")])
    src = read_table(path, spec, null_values=["?"], trim=True)
    out = spec.fit(src.frame).transform(src.frame)
    # " ?" is missing once trimmed: the category "<null>"; with one row each, ids by value:
    # "<null>" 1, "a" 2, "b" 3 (and "a " is "a")
    assert out.inputs.sparse["u"].tolist() == [2, 1, 3]
    assert out.labels["y"].tolist() == [1.0, 0.0, 1.0]


# ------------------------------------------------------------------------------- labels
def test_binary_label_by_positive_values_and_its_errors(tmp_path: Path) -> None:
    frame = pl.DataFrame({"u": ["a", "b", "c", "a"], "inc": [">50K", "<=50K", ">50K", "<=50K"]})
    spec = FeatureSpec(sparse=[SparseFeature("u")], labels=[Label("inc", positive=[">50K"])])
    assert spec.fit(frame).transform(frame).labels["inc"].tolist() == [1.0, 0.0, 1.0, 0.0]
    plain = FeatureSpec(sparse=[SparseFeature("u")], labels=[Label("inc")])
    with pytest.raises(DataError) as e:
        plain.fit(frame)
    assert "must be 0 or 1, not '>50K'" in str(e.value)
    assert 'positive = [">50K"]' in str(e.value)  # the fix, spelled as in a spec
    typo = FeatureSpec(sparse=[SparseFeature("u")], labels=[Label("inc", positive=[">50k"])])
    with pytest.raises(DataError, match=r"none of the positive values \['>50k'\] occurs.*'<=50K'"):
        typo.fit(frame)
    strict = Label("inc", positive=[">50K"], negative=["<=50K"])
    spec2 = FeatureSpec(sparse=[SparseFeature("u")], labels=[strict])
    fitted = spec2.fit(frame)
    path = _write(tmp_path / "test.csv", ["u,inc", "a,>50K", "b,>50K.", "c,<=50K"])
    with pytest.raises(DataError) as e:
        fitted.transform(read_table(path, spec2).frame)
    assert (e.value.path, e.value.row, e.value.task) == (str(path), 2, "inc")
    assert "'>50K.' is neither a positive" in str(e.value)
    for bad in (
        lambda: Label("x", "regression", positive=["a"]),
        lambda: Label("x", negative=["a"]),
        lambda: Label("x", positive=["a"], negative=["a"]),
        lambda: Label("x", positive=[]),
        lambda: Label("x", "binary", classes=["a", "b"]),
        lambda: Label("x", "ordinal"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError):
            bad()


def test_regression_target_standardised_on_train_and_metrics_in_its_units() -> None:
    hours = np.array([40.0, 13.0, 40.0, 40.0, 45.0, 16.0])
    frame = pl.DataFrame({"u": list("abcabc"), "h": hours})
    fitted = FeatureSpec(sparse=[SparseFeature("u")], labels=[Label("h", "regression")]).fit(frame)
    mu, sigma = hours.mean(), hours.std()  # population std (ddof 0)
    assert fitted.label_scale("h") == pytest.approx((mu, sigma))
    target = fitted.transform(frame).labels["h"]
    np.testing.assert_allclose(target.numpy(), (hours - mu) / sigma, rtol=1e-6)
    np.testing.assert_allclose(fitted.inverse_label("h", target).numpy(), hours, rtol=1e-6)
    raw = FeatureSpec(
        sparse=[SparseFeature("u")], labels=[Label("h", "regression", standardize=False)]
    ).fit(frame)
    assert raw.label_scale("h") == (0.0, 1.0)
    assert raw.transform(frame).labels["h"].tolist() == hours.tolist()
    # A prediction in standardised units, scored in hours: MAE_h = σ·MAE, MSE_h = σ²·MSE.
    pred_std = torch.tensor([0.1, -1.0, 0.5, 0.0, 0.3, -0.8])
    task = make_task("h", "regression", ["mae", "mse"], target_std=fitted.label_scale("h")[1])
    for m in task.metrics.values():
        m.update(pred_std, target)
    pred_h = pred_std.double().numpy() * sigma + mu
    assert task.metrics["mae"].compute() == pytest.approx(np.abs(pred_h - hours).mean(), rel=1e-6)
    assert task.metrics["mse"].compute() == pytest.approx(((pred_h - hours) ** 2).mean(), rel=1e-6)


def test_multiclass_label_classes_and_unknown_class(tmp_path: Path) -> None:
    frame = pl.DataFrame({"u": list("abcd"), "r": ["Wife", "Husband", "Own-child", "Husband"]})
    fitted = FeatureSpec(sparse=[SparseFeature("u")], labels=[Label("r", "multiclass")]).fit(frame)
    assert fitted.classes["r"] == ["Husband", "Own-child", "Wife"]  # sorted as text
    y = fitted.transform(frame).labels["r"]
    assert y.dtype == torch.int64 and y.tolist() == [2, 0, 1, 0]
    path = _write(tmp_path / "t.csv", ["u,r", "a,Wife", "b,Other-relative"])
    with pytest.raises(DataError) as e:
        fitted.transform(read_table(path, fitted.spec).frame)
    assert (e.value.row, e.value.column) == (2, "r")
    assert "'Other-relative' is not one of the task's 3 classes" in str(e.value)
    given = Label("r", "multiclass", classes=["Wife", "Husband", "Own-child", "Other"])
    fitted2 = FeatureSpec(sparse=[SparseFeature("u")], labels=[given]).fit(frame)
    assert fitted2.num_classes == {"r": 4}
    assert fitted2.transform(frame).labels["r"].tolist() == [0, 1, 2, 1]


def test_fitted_labels_survive_save_and_load(tmp_path: Path) -> None:
    frame = pl.DataFrame({"u": list("abc"), "h": [1.0, 2.0, 6.0], "r": ["x", "y", "x"]})
    spec = FeatureSpec(
        sparse=[SparseFeature("u")],
        labels=[Label("h", "regression"), Label("r", "multiclass")],
    )
    fitted = spec.fit(frame)
    fitted.save(tmp_path / "f.json")
    again = FittedFeatures.load(tmp_path / "f.json")
    assert again.label_stats == fitted.label_stats and again.classes == fitted.classes
    assert torch.equal(again.transform(frame).labels["h"], fitted.transform(frame).labels["h"])
    # a file of the format before labels had options: its regression targets were raw
    old = fitted.to_dict()
    old["version"] = 1
    for key in ("label_stats", "classes"):
        del old[key]
    old["spec"]["labels"] = [{"task": "h", "kind": "regression", "column": None}]
    (tmp_path / "v1.json").write_text(json.dumps(old))
    v1 = FittedFeatures.load(tmp_path / "v1.json")
    assert v1.transform(frame).labels["h"].tolist() == [1.0, 2.0, 6.0]


# ------------------------------------------------------------------------- multiclass model
@pytest.mark.parametrize("arch", [m for m in MODELS if m != "esmm"])
def test_multiclass_heads_output_one_logit_per_class(arch: str) -> None:
    torch.manual_seed(0)
    features = {"u": (5, 2)}
    tasks = {"a": "binary", "r": "multiclass", "h": "regression"}
    model = make_model(arch, features, tasks, num_classes={"r": 3}, backend="torch")
    _, preds = model(random_inputs(6, features, generator=torch.Generator().manual_seed(1)))
    assert preds["r"].shape == (6, 3) and preds["a"].shape == (6,) and preds["h"].shape == (6,)
    loss = task_loss("multiclass")(preds["r"], torch.tensor([0, 1, 2, 0, 1, 2]))
    expected = torch.nn.functional.cross_entropy(preds["r"], torch.tensor([0, 1, 2, 0, 1, 2]))
    assert loss.item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match=r"num_classes=\{'r': C\}"):
        make_model(arch, features, tasks, backend="torch")
    with pytest.raises(ValueError, match=r"not multiclass: \['a'\]"):
        make_model(arch, features, tasks, num_classes={"r": 3, "a": 2}, backend="torch")


def test_class_metrics_against_hand_computed_values() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 2, 2, 1])
    # argmax: 0, 1, 2, 0 -> right on rows 1 and 3: accuracy 1/2
    acc = ClassMetric("accuracy", 3)
    acc.update(logits, y)
    assert acc.compute() == pytest.approx(0.5)
    # per class F1: class 0 (tp 1, fp 1, fn 0) 2/3; class 1 (tp 0) 0; class 2 (tp 1, fn 1) 2/3
    f1 = ClassMetric("macro_f1", 3)
    f1.update(logits, y)
    assert f1.compute() == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    ll = ClassMetric("logloss", 3)
    ll.update(logits[:2], y[:2])  # two batches
    ll.update(logits[2:], y[2:])
    p = torch.softmax(logits.double(), 1)
    assert ll.compute() == pytest.approx(-p[range(4), y].log().mean().item())
    # and the same as scikit-learn's own on the same numbers
    assert acc.compute() == accuracy_score(y, logits.argmax(1))
    assert f1.compute() == pytest.approx(f1_score(y, logits.argmax(1), average="macro"))
    assert ll.compute() == pytest.approx(log_loss(y, p.numpy(), labels=[0, 1, 2]))
    assert ClassMetric("accuracy", 3).higher_is_better and not ll.higher_is_better
    with pytest.raises(ValueError, match=r"\(N, 3\) logits"):
        acc.update(logits[:, :2], y)


# ------------------------------------------------------------------------------ the builder
def test_table_builder_reads_splits_and_reports_in_original_units(tmp_path: Path) -> None:
    path = _write(tmp_path / "adult.data", LINES)
    problem = table(data=_data(path), model=MODEL)
    assert [t.name for t in problem.tasks] == ["rel", "hours", "income"]
    assert problem.info["split_rows"] == [6, 2, 2] and problem.info["rows"] == 10
    assert set(problem.tasks[0].metrics) == {"accuracy"}
    train = problem.train
    assert train.labels["rel"].dtype == torch.int64
    assert set(train.inputs.multi_hot) == {"tags"} and train.inputs.dense.shape == (6, 1)
    # the regression target is standardised with the *training* rows' statistics
    rows = np.random.default_rng(0).permutation(10)[:6]  # split_frame's permutation
    hours = np.array([float(LINES[r].split(", ")[4]) for r in rows])
    mu, sigma = problem.info["target_scale.hours"]
    assert (mu, sigma) == pytest.approx((hours.mean(), hours.std()))
    np.testing.assert_allclose(train.labels["hours"].numpy(), (hours - mu) / sigma, rtol=1e-5)
    income = [1.0 if LINES[r].endswith(">50K") else 0.0 for r in rows]
    assert train.labels["income"].tolist() == income
    # the trainer's metric sees standardised predictions and reports hours
    mae = problem.tasks[1].metrics["mae"]
    mae.reset()
    mae.update(torch.zeros(6), train.labels["hours"])  # predict the training mean
    assert mae.compute() == pytest.approx(np.abs(hours - mu).mean(), rel=1e-5)
    model = problem.make_model()
    _, preds = model(train.inputs)
    assert preds["rel"].shape == (6, 3)


def test_table_builder_with_train_and_test_files(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.csv", ["u,y", *[f"{'ab'[i % 2]},{i % 2}" for i in range(20)]])
    test = _write(tmp_path / "test.csv", ["u,y", "a,0", "b,1"])
    data = {
        "train": str(train),
        "test": str(test),
        "val_fraction": 0.25,
        "columns": {"u": "sparse", "y": {"task": "y", "kind": "binary"}},
    }
    problem = table(data=data, model=MODEL)
    assert problem.info["split_rows"] == [15, 5, 2]
    assert problem.test.labels["y"].tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"columns": {"age": "dense"}}, ValueError, "names no task"),
        ({"colums": {}}, ValueError, r"unknown keys \['colums'\]"),
        ({"split": [0.5, 0.5]}, ValueError, "three fractions"),
        ({"separator": ", "}, ValueError, 'separator = "," and trim = true'),
        ({"path": "nowhere.csv"}, FileNotFoundError, "current directory"),
        ({"test": "x.csv"}, ValueError, "either path"),
        ({"header": "no"}, ValueError, "header must be true or false"),
    ],
)
def test_table_spec_errors_name_the_key(
    tmp_path: Path, change: dict[str, Any], error: type[Exception], match: str
) -> None:
    path = _write(tmp_path / "adult.data", LINES)
    data = _data(path)
    if "test" in change:
        _write(tmp_path / "x.csv", ["a"])
        change = {"test": str(tmp_path / "x.csv")}
    data.update(change)
    with pytest.raises(error, match=match):
        table(data=data, model=MODEL)


def test_column_roles_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "adult.data", LINES)
    cols = _data(path)["columns"]

    def build(columns: dict[str, Any]) -> None:
        table(data=_data(path, columns=columns), model=MODEL)

    missing = {k: v for k, v in cols.items() if k != "tags"}
    with pytest.raises(DataError) as e:
        build(missing)
    assert e.value.path == str(path)
    assert "does not list: ['tags']" in str(e.value) and 'tags = "ignore"' in str(e.value)
    with pytest.raises(DataError, match=r"no column\(s\) \['extra'\]"):
        build({**cols, "extra": "dense"})
    with pytest.raises(ValueError, match=r"\[data.columns\] age: kind must be"):
        build({**cols, "age": "numeric"})
    with pytest.raises(ValueError, match=r"\[data.columns\] age: unknown dense options \['lg'\]"):
        build({**cols, "age": {"kind": "dense", "lg": True}})
    with pytest.raises(ValueError, match=r"\[data.columns\] income: unknown task keys"):
        build({**cols, "income": {"task": "income", "kind": "binary", "postive": [">50K"]}})
    with pytest.raises(ValueError, match=r'income: a task needs kind = "binary"'):
        build({**cols, "income": {"task": "income"}})
    # a string label without positive: the row, and the fix spelled for the spec
    with pytest.raises(DataError) as e:
        build({**cols, "income": {"task": "income", "kind": "binary"}})
    assert "positive = [" in str(e.value) and e.value.column == "income"
    assert e.value.path == str(path) and e.value.row is not None
    # a dense column holding text
    with pytest.raises(DataError, match=r"column 'job': not a number in a dense column"):
        build({**cols, "job": "dense"})


def _adult_like(n: int, seed: int = 0) -> list[str]:
    """``n`` random lines of LINES' format; income and rel depend on age and job."""
    rng = np.random.default_rng(seed)
    jobs, rels = ["State-gov", "Self-emp", "Private", "?"], ["Husband", "Wife", "Own-child"]
    out = []
    for _ in range(n):
        age, job = int(rng.integers(18, 70)), int(rng.integers(0, 4))
        rel = rels[2] if age < 30 else rels[int(rng.integers(0, 2))]
        rich = rng.random() < (0.7 if job == 2 and age > 35 else 0.2)
        tags = str(rng.choice(["a|b", "b", "?", "c", "a|c"]))
        hours = int(rng.integers(10, 60))
        out.append(f"{age}, {jobs[job]}, {tags}, {rel}, {hours}, {'>50K' if rich else '<=50K'}")
    return out


def _tiny_spec(path: Path) -> Any:
    _write(path, _adult_like(200))
    return parse_spec(
        {
            "name": "adult-tiny",
            "problem": "mtlrec.bench:table",
            "methods": ["ew", "dbmtl"],
            "data": _data(path),
            "model": MODEL,
            "train": {"epochs": 2, "batch_size": 16},
            "tasks": {
                "rel": {"accuracy": "higher"},
                "hours": {"mae": "lower", "mse": "lower"},
                "income": {"auc": "higher"},
            },
        }
    )


def test_table_problem_trains_stl_and_methods(tmp_path: Path) -> None:
    spec = _tiny_spec(tmp_path / "adult.data")
    build_problem(spec)  # tasks and directions match the spec
    records = run_benchmark(
        spec,
        methods=["ew", "dbmtl"],
        seeds=[0],
        stl=True,
        tracking_uri=None,
        spool_root=tmp_path / "spool",
        out_dir=tmp_path / "out",
        progress=False,
        echo=lambda _: None,
    )
    assert len(records) == 3 + 2
    for r in records:
        for task, metrics in r.test.items():
            assert all(math.isfinite(v) for v in metrics.values()), (r.method, task)
    ew = next(r for r in records if r.method == "ew")
    assert 0.0 <= ew.test["rel"]["accuracy"] <= 1.0 and ew.test["hours"]["mae"] > 0.5
