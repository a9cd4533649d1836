"""Shared fixtures of the mtlbench tests: a tiny synthetic spec in a specs folder of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = """
name = "tiny"
description = "a tiny synthetic spec for the tests"
problem = "mtlbench.problems.synthetic:build"
methods = ["ew", "dbmtl"]

[data]
n_train = 512
n_val = 256
n_test = 256
seed = 3

[model]
hidden = 16
layers = 1

[train]
epochs = 2
batch_size = 64
lr = 3e-3

[tasks.click]
auc = "higher"

[tasks.rating]
mae = "lower"

[tasks.price]
mae = "lower"

[paper]
source = "made-up numbers for the test"
[paper.delta_p]
ew = -1.5
"""


def spec_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    """``tmp_path/specs/tiny.toml`` holding ``text``, the folder mtlbench searches
    (``MTLBENCH_SPECS``), and ``tmp_path`` the working directory."""
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "tiny.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MTLBENCH_SPECS", str(folder))
    return folder


@pytest.fixture
def specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return spec_folder(tmp_path, monkeypatch, TINY)
