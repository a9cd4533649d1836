"""Where a run came from: the command, the code's git commit, the package versions.

:func:`provenance_tags` gives tags under MLflow's own names where MLflow has one, so the UI
shows them in its usual places (a run's *Source*, *Git commit*, *Created by*)::

    mlflow.source.name        the command line, secrets redacted (see :func:`command_line`)
    mlflow.source.type        LOCAL
    mlflow.source.git.commit  the commit of the code that ran (its git work tree)
    mlflow.source.git.branch
    mlflow.source.git.repoURL the remote's URL, credentials redacted
    mlflow.user               who ran it
    mtltrain.command          the command line again (mlflow.source.name is shown shortened)
    mtltrain.git.dirty        "true" when the work tree had uncommitted changes to tracked files
    versions.<package>        python, torch and every package named

:func:`environment` gives the same and more (platform, every version) for a JSON artifact.
Nothing here raises for a missing git or package: what cannot be found is left out.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .mlflow_sink import redact_uri

__all__ = ["command_line", "environment", "git_info", "package_versions", "provenance_tags"]

# Options whose value is a secret or may hold one (a URI with a password).
_SECRET_OPTIONS = ("--tracking-uri", "--password", "--token", "--secret", "--api-key")


def command_line(argv: Sequence[str] | None = None) -> str:
    """``argv`` (default ``sys.argv``) as one shell-quoted line, with secrets redacted: the
    value of ``--tracking-uri`` (and of any argument that is a URI) goes through
    :func:`~.mlflow_sink.redact_uri`; values of ``--password``, ``--token``, ``--secret`` and
    ``--api-key`` become ``***``. A ``python -m`` launch shows as ``python -m <module>``, a
    console script by its name."""
    args = list(sys.argv if argv is None else argv)
    if argv is None and args:
        orig = list(getattr(sys, "orig_argv", []))
        if args[0].endswith(".py") and len(orig) >= 3 and orig[1] == "-m":
            args = [Path(orig[0]).name, "-m", orig[2], *args[1:]]
        elif os.path.isabs(args[0]) and not args[0].endswith(".py"):
            args[0] = Path(args[0]).name  # a console script: `mtlbench`, not its full path
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append(_hide(out[-1], arg))
            hide_next = False
            continue
        name, eq, value = arg.partition("=")
        if arg.startswith("--") and eq and name in _SECRET_OPTIONS:
            out.append(f"{name}={_hide(name, value)}")
        elif arg in _SECRET_OPTIONS:
            out.append(arg)
            hide_next = True
        else:
            out.append(redact_uri(arg) if "://" in arg else arg)
    return shlex.join(out)


def _hide(option: str, value: str) -> str:
    return redact_uri(value) if option == "--tracking-uri" else "***"


def _git(path: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.strip()
    return text or None


def git_info(path: str | os.PathLike[str]) -> dict[str, str]:
    """``commit``, ``branch``, ``dirty`` ("true" / "false") and ``repo_url`` (credentials
    redacted) of the git work tree holding ``path``; empty when it is not in one."""
    where = Path(path)
    where = where if where.is_dir() else where.parent
    commit = _git(where, "rev-parse", "HEAD")
    if commit is None:
        return {}
    info = {"commit": commit}
    branch = _git(where, "rev-parse", "--abbrev-ref", "HEAD")
    if branch is not None and branch != "HEAD":
        info["branch"] = branch
    status = _git(where, "status", "--porcelain", "--untracked-files=no")
    info["dirty"] = "true" if status else "false"
    url = _git(where, "config", "--get", "remote.origin.url")
    if url is not None:
        info["repo_url"] = redact_uri(url)
    return info


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """``{name: version}`` of the installed distributions among ``packages`` (plus
    ``python``); names not installed are left out. An imported module's own ``__version__``
    wins: it carries the build (torch's ``2.14.1+cu130``, where its metadata says
    ``2.14.1``)."""
    out = {"python": platform.python_version()}
    for name in packages:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module is not None else None
        if isinstance(version, str):
            out[name] = version
            continue
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def provenance_tags(
    *,
    argv: Sequence[str] | None = None,
    packages: Iterable[str] = ("torch", "mtlbalance", "mtltrain"),
    code: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """The run tags of the module doc. ``code``: a file or folder of the code that runs (its
    git work tree gives the commit; default: the current directory)."""
    command = command_line(argv)
    tags = {
        "mlflow.source.name": command,
        "mlflow.source.type": "LOCAL",
        "mtltrain.command": command,
    }
    with_user = _user()
    if with_user:
        tags["mlflow.user"] = with_user
    git = git_info(Path.cwd() if code is None else code)
    for key, tag in (
        ("commit", "mlflow.source.git.commit"),
        ("branch", "mlflow.source.git.branch"),
        ("repo_url", "mlflow.source.git.repoURL"),
        ("dirty", "mtltrain.git.dirty"),
    ):
        if key in git:
            tags[tag] = git[key]
    for name, version in package_versions(packages).items():
        tags[f"versions.{name}"] = version
    return tags


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no user name in a container without passwd entry
        return None


def environment(
    *, packages: Iterable[str] = (), code: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Everything :func:`provenance_tags` records, plus the platform and the versions of all
    installed distributions, for a JSON artifact."""
    every = sorted(
        {d.metadata["Name"] for d in importlib.metadata.distributions() if d.metadata["Name"]},
        key=str.lower,
    )
    return {
        "command": command_line(),
        "python": sys.version,
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "git": git_info(Path.cwd() if code is None else code),
        "versions": package_versions(packages),
        "installed": package_versions(every),
    }
