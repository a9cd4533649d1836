"""Development sessions for the mtlbalance workspace.

    python3 -m nox -s dev              # create/update the shared env (.venv), print how to use it
    python3 -m nox                     # lint, typecheck, tests
    python3 -m nox -s tests -- -k dbmtl -x
    python3 -m nox -s demo | perf
    python3 -m nox -s bench -- synthetic-hetero --methods ew dbmtl --seeds 3 --stl
    python3 -m nox -s report -- synthetic-hetero

Every session runs in ONE shared virtualenv (``<repo>/.venv``, or ``$MTL_VENV``): a torch
install is several GB, so a virtualenv per session would fill the disk. Sessions are declared
``venv_backend="none"``; :func:`_ensure_env` creates the shared env on first use and re-runs
pip only when its inputs change (constraints.txt, any package's pyproject.toml, or the
install lists below).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nox

nox.needs_version = ">=2024.4"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = True
nox.options.error_on_external_run = True

REPO = Path(__file__).resolve().parent
CONSTRAINTS = REPO / "constraints.txt"
VENV = Path(os.environ.get("MTL_VENV", REPO / ".venv")).expanduser().absolute()
VENV_BIN = VENV / "bin"  # POSIX only (fcntl lock below); these machines are Linux
STAMP = VENV / ".mtl-install-stamp"

# Workspace packages, installed editable (`pip install -e`), with their extras.
# Adding a package or an app is one line here: "packages/<name>[extras]" / "apps/<name>[extras]".
PACKAGES: list[str] = [
    "packages/mtlbalance[bench,solvers,test]",
    "packages/mtltrain[mlflow,test]",
    "packages/mtlrec[test]",
    "packages/mtlmolecule[convert,test]",
    "packages/mtlvision[test]",
    "apps/mtlbench[mlflow,test]",
]

# Everything else the sessions need (versions come from constraints.txt).
EXTRA_REQUIREMENTS: list[str] = [
    # torchrec's own dependencies, minus the CUDA fbgemm-gpu it declares (see below)
    "fbgemm-gpu-cpu",
    "tensordict",
    "torchmetrics",
    "pyre-extensions",
    "pytest",
    "hypothesis",
    "ruff",
    "mypy",
]

# Only the `mutate` session needs these (installed by it, on first use).
MUTATION_REQUIREMENTS: list[str] = ["cosmic-ray"]

# Installed in a second pip call with `--no-deps`, after the above. torchrec goes here (and
# "fbgemm-gpu-cpu" into EXTRA_REQUIREMENTS): torchrec declares the CUDA `fbgemm-gpu` build,
# the wrong one for these machines. See constraints.txt.
NO_DEPS_REQUIREMENTS: list[str] = ["torchrec"]


def _install_inputs_hash() -> str:
    """Hash of everything that decides what pip installs into the shared env."""
    h = hashlib.sha256()
    manifests = [CONSTRAINTS]
    manifests += sorted(REPO.glob("packages/*/pyproject.toml"))
    manifests += sorted(REPO.glob("apps/*/pyproject.toml"))
    for path in manifests:
        h.update(str(path.relative_to(REPO)).encode())
        h.update(b"\0")
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
        h.update(b"\0")
    lists = {
        "packages": PACKAGES,
        "extra": EXTRA_REQUIREMENTS,
        "no_deps": NO_DEPS_REQUIREMENTS,
    }
    h.update(json.dumps(lists, sort_keys=True).encode())
    return h.hexdigest()


@contextmanager
def _env_lock() -> Iterator[None]:
    """Serialise env creation/installs between concurrent nox runs sharing one env."""
    VENV.mkdir(parents=True, exist_ok=True)
    with open(VENV / ".mtl-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _venv_exe(name: str) -> str:
    return str(VENV_BIN / name)


def _env_vars() -> dict[str, str]:
    """Environment for commands: the shared env's bin first on PATH, VIRTUAL_ENV set."""
    return {
        "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]),
        "VIRTUAL_ENV": str(VENV),
    }


def _ensure_env(session: nox.Session) -> None:
    """Create the shared env if needed; (re)install the workspace if its inputs changed."""
    # The shared env is created with this interpreter: refuse an older one (ruff's UP036
    # assumes target >= 3.11, but nox may be started by any python3 on a fresh machine).
    if sys.version_info < (3, 11):  # noqa: UP036
        session.error(f"Python >= 3.11 is required to run nox here, not {sys.version.split()[0]}")
    with _env_lock():
        python = VENV_BIN / "python"
        if not python.exists():
            session.log(f"Creating the shared environment at {VENV}")
            if importlib.util.find_spec("virtualenv") is not None:
                session.run(sys.executable, "-m", "virtualenv", str(VENV), external=True)
            else:
                session.run(sys.executable, "-m", "venv", str(VENV), external=True)
            STAMP.unlink(missing_ok=True)

        digest = _install_inputs_hash()
        if STAMP.is_file() and STAMP.read_text().strip() == digest:
            session.log(f"Shared environment {VENV} is up to date (skipping pip)")
            return

        session.log(f"Installing the workspace into {VENV}")
        STAMP.unlink(missing_ok=True)
        pip = [str(python), "-m", "pip", "install", "-c", str(CONSTRAINTS)]
        editables = [arg for pkg in PACKAGES for arg in ("-e", str(REPO / pkg))]
        session.run(*pip, *editables, *EXTRA_REQUIREMENTS, env=_env_vars(), external=True)
        if NO_DEPS_REQUIREMENTS:
            session.run(*pip, "--no-deps", *NO_DEPS_REQUIREMENTS, env=_env_vars(), external=True)
        STAMP.write_text(digest + "\n")


def _run(session: nox.Session, program: str, *args: str) -> None:
    """Run `program` from the shared env (never whatever happens to be first on PATH)."""
    session.run(_venv_exe(program), *args, env=_env_vars(), external=True)


@nox.session(venv_backend="none")
def dev(session: nox.Session) -> None:
    """Install the whole workspace (editable) for development, into the shared env."""
    _ensure_env(session)
    session.log(f"Environment ready. Activate it with:  source {VENV_BIN / 'activate'}")
    session.log(f"or call its tools directly, e.g.:     {VENV_BIN / 'python'} -m pytest")


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Run the test suite: python -m pytest {posargs}."""
    _ensure_env(session)
    _run(session, "python", "-m", "pytest", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check over the whole repository."""
    _ensure_env(session)
    _run(session, "ruff", "check", ".", *session.posargs)
    _run(session, "ruff", "format", "--check", ".")


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """mypy, configured in pyproject.toml ([tool.mypy] files = packages/*/src)."""
    _ensure_env(session)
    _run(session, "mypy", *session.posargs)


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """The README's main job: STL, EW, DB-MTL and baselines on generated data, tracked in MLflow
    (./mlflow.db), then the Δp table: mtlbench run synthetic-hetero --stl --restart {posargs}.
    --restart: running the demo again starts its runs over (the report keeps the newest)."""
    _ensure_env(session)
    _run(session, "mtlbench", "run", "synthetic-hetero", "--stl", "--restart", *session.posargs)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Run a benchmark spec: nox -s bench -- SPEC [--methods ...] [--seeds N] [--stl] ..."""
    _ensure_env(session)
    if not session.posargs:
        _run(session, "mtlbench", "list")
        session.error("name a spec: python3 -m nox -s bench -- SPEC [--methods ...] [--stl]")
    _run(session, "mtlbench", "run", *session.posargs)


@nox.session(venv_backend="none")
def report(session: nox.Session) -> None:
    """Δp tables of a spec's tracked runs: nox -s report -- SPEC [--out DIR] ..."""
    _ensure_env(session)
    if not session.posargs:
        session.error("name a spec: python3 -m nox -s report -- SPEC")
    _run(session, "mtlbench", "report", *session.posargs)


@nox.session(venv_backend="none")
def perf(session: nox.Session) -> None:
    """Step-time benchmark of the balancing overhead: benchmarks/perf/step_time.py {posargs}."""
    _ensure_env(session)
    _run(session, "python", str(REPO / "benchmarks" / "perf" / "step_time.py"), *session.posargs)


@nox.session(name="bench-scale", venv_backend="none")
def bench_scale(session: nox.Session) -> None:
    """Scale benchmark of sharded recsys training (TorchRec DMP tables, streamed Parquet log):
    examples/s at 1 and 2 processes and bytes communicated per step, EW / DB-MTL, MMoE / PLE:
    benchmarks/perf/scale_throughput.py {posargs} (results: benchmarks/results/scale/)."""
    _ensure_env(session)
    script = REPO / "benchmarks" / "perf" / "scale_throughput.py"
    _run(session, "python", str(script), *session.posargs)


@nox.session(venv_backend="none")
def mutate(session: nox.Session) -> None:
    """Mutation testing (cosmic-ray) of the modules that decide results: nox -s mutate [--
    TARGET ...] (targets: benchmarks/mutation/targets.toml; results: benchmarks/results/mutation/).
    Slow: minutes to hours per target on 2 cores, so not part of CI's test run."""
    _ensure_env(session)
    with _env_lock():
        _run(session, "python", "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS),
             *MUTATION_REQUIREMENTS)  # fmt: skip
    _run(session, "python", str(REPO / "benchmarks" / "mutation" / "run.py"), *session.posargs)
