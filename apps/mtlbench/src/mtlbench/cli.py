"""``mtlbench``: run and report the benchmarks.

    mtlbench list
    mtlbench run synthetic-hetero --methods ew dbmtl uw --seeds 3 --stl
    mtlbench report synthetic-hetero
    mtlbench ui
    mtlbench sync [SPOOL] [--tracking-uri URI]

Runs are tracked in MLflow (a local SQLite store ``./mlflow.db`` by default) through a local
spool (``./mtlruns-spool``), so nothing is lost when MLflow is missing or down.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from mtltrain.tracking.mlflow_sink import call_with_deadline, default_tracking_uri, redact_uri
from mtltrain.tracking.spool import DEFAULT_SPOOL_ROOT

from . import initspec
from .report import (
    build_report,
    collect_runs,
    render_markdown,
    write_report,
)
from .spec import find_spec, list_specs

__all__ = ["main"]


def _mlflow_available() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def _tracking_uri(args: argparse.Namespace) -> str | None:
    if args.no_tracking:
        return None
    if args.tracking_uri:
        return str(args.tracking_uri)
    if not _mlflow_available():
        print(
            "mlflow is not installed: records stay in the spool "
            f"({args.spool}); upload them later with `mtlbench sync`",
            file=sys.stderr,
        )
        return None
    return default_tracking_uri(args.spool)


def _add_store_options(p: argparse.ArgumentParser, *, no_tracking: bool = True) -> None:
    p.add_argument(
        "--spool",
        default=str(DEFAULT_SPOOL_ROOT),
        help="local spool every record goes to first (default: %(default)s)",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: sqlite:///<spool parent>/mlflow.db when mlflow is "
        "installed)",
    )
    if no_tracking:
        p.add_argument("--no-tracking", action="store_true", help="spool only, no MLflow")
    p.add_argument(
        "--store-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the tracking store before going on without it (reads) or "
        "leaving the records in the spool (uploads) (default: %(default)s)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlbench",
        description="Run multi-task learning benchmarks from specs, tracked in MLflow, and "
        "report Δp tables.",
    )
    parser.add_argument(
        "--specs",
        default=None,
        help="a folder of your own specs, searched before the ones shipped with mtlbench "
        "(default: $MTLBENCH_SPECS)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("list", help="list the benchmark specs")

    run = sub.add_parser(
        "run", help="train STL and methods on a benchmark, then print the Δp table"
    )
    run.add_argument("spec", help="spec name (see `mtlbench list`) or path to a spec .toml")
    run.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="methods (default: the spec's); e.g. ew dbmtl log+pcgrad",
    )
    run.add_argument(
        "--seeds", type=int, default=None, help="number of seeds 0..N-1 (default: the spec's)"
    )
    run.add_argument(
        "--seed-list", type=int, nargs="+", default=None, help="explicit seeds instead of --seeds"
    )
    run.add_argument(
        "--stl",
        action="store_true",
        help="also train the single-task (STL) reference, one run per task",
    )
    run.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override the spec's epoch budget (recorded with the run)",
    )
    run.add_argument(
        "--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ..."
    )
    run.add_argument(
        "--out",
        default="mtlbench-out",
        help="checkpoints and reports go here (default: %(default)s)",
    )
    run.add_argument(
        "--resume", action="store_true", help="continue runs from their last checkpoint in --out"
    )
    run.add_argument(
        "--restart",
        action="store_true",
        help="delete the runs' earlier checkpoints in --out and start them over",
    )
    run.add_argument(
        "--log-every", type=int, default=50, help="per-step values reach the host every N steps"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data parallel: start N processes (gloo on CPU, nccl on GPU), each training its "
        "shard of every batch; under torchrun leave it out (docs/distributed.md)",
    )
    _add_store_options(run)

    rep = sub.add_parser(
        "report", help="Δp tables (Markdown, PNG, JSON) from the tracked runs of a spec"
    )
    rep.add_argument("spec", help="spec name or path")
    rep.add_argument(
        "--out",
        default=None,
        help="folder for report.md/.png/.json (default: mtlbench-out/reports/<spec>)",
    )
    rep.add_argument(
        "--from-spool", action="store_true", help="read the spool instead of the MLflow store"
    )
    _add_store_options(rep, no_tracking=False)

    ui = sub.add_parser("ui", help="serve the MLflow UI on 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    _add_store_options(ui, no_tracking=False)

    initspec.add_parser(sub)

    sync = sub.add_parser("sync", help="upload a spool (or one run in it) to an MLflow store")
    sync.add_argument(
        "path", nargs="?", default=str(DEFAULT_SPOOL_ROOT), help="spool root or run directory"
    )
    sync.add_argument(
        "--tracking-uri", default=None, help="default: sqlite:///<spool parent>/mlflow.db"
    )
    sync.add_argument(
        "--store-timeout", type=float, default=30.0, help="seconds per request to the store"
    )
    return parser


# What a user's mistake or an unusable file looks like: printed as one line, no traceback.
_USER_ERRORS = (ValueError, OSError, LookupError, TypeError, ImportError)


@contextlib.contextmanager
def _store_deadlines(seconds: float | None) -> Iterator[None]:
    """MLflow's HTTP client waits 120 s per request and retries 7 times by default: a stalled
    server would hold a command for many minutes. Unless the user set them, cap both for the
    duration of the command."""
    if seconds is None:
        yield
        return
    if not seconds > 0:
        raise ValueError(f"--store-timeout must be a positive number of seconds, not {seconds}")
    caps = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(seconds))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    }
    added = [k for k in caps if k not in os.environ]
    os.environ.update({k: caps[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


class _DropFxTracingNotice(logging.Filter):
    """TorchRec's modules call torch.fx's deprecated ``is_fx_tracing``, which logs a notice
    addressed to library authors on every run; a user of mtlbench cannot act on it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is_fx_tracing will return true" not in record.getMessage()


def _quiet_libraries() -> None:
    """Keep other libraries' chatter out of the progress bars: MLflow's INFO lines (schema
    creation, ...) unless MLFLOW_LOGGING_LEVEL says otherwise, and torch.fx's notice."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    fx = logging.getLogger("torch.fx._symbolic_trace")
    if not any(isinstance(f, _DropFxTracingNotice) for f in fx.filters):
        fx.addFilter(_DropFxTracingNotice())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    _quiet_libraries()
    try:
        with _store_deadlines(getattr(args, "store_timeout", None)):
            return int(_COMMANDS[args.command](args) or 0)
    except _USER_ERRORS as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"mtlbench {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mtlbench {args.command}: interrupted", file=sys.stderr)
        return 130


def _list(args: argparse.Namespace) -> int:
    for spec in list_specs(args.specs):
        tasks = ", ".join(f"{t} ({', '.join(ms)})" for t, ms in spec.tasks.items())
        paper = f"; paper: {spec.paper.source}" if spec.paper is not None else ""
        print(f"{spec.name}: {spec.description}")
        methods = " ".join(spec.methods)
        print(f"    tasks: {tasks}; methods: {methods}; {spec.train.epochs} epochs{paper}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .launch import job, relaunch

    code = relaunch(args.argv, args.nproc)
    if code is not None:
        return code
    with job(args.device):
        return _run_here(args)


def _run_here(args: argparse.Namespace) -> int:
    from .launch import is_rank0
    from .runner import run_benchmark, with_epochs

    spec = with_epochs(find_spec(args.spec, args.specs), args.epochs)
    methods = list(spec.methods if args.methods is None else args.methods)
    stl = args.stl or "stl" in methods
    methods = [m for m in methods if m != "stl"]
    if args.seed_list is not None:
        seeds = list(args.seed_list)
    else:
        n = spec.seeds if args.seeds is None else args.seeds
        if n < 1:
            raise ValueError(f"--seeds must be >= 1, not {n}")
        seeds = list(range(n))
    uri = _tracking_uri(args)
    records = run_benchmark(
        spec,
        methods=methods,
        seeds=seeds,
        stl=stl,
        tracking_uri=uri,
        spool_root=args.spool,
        out_dir=args.out,
        device=args.device,
        resume=args.resume,
        restart=args.restart,
        progress=False if args.quiet else None,
        log_every=args.log_every,
        store_timeout=args.store_timeout,
    )
    if not is_rank0():  # rank 0 reports the job
        return 0
    report = build_report(spec, records)
    paths = write_report(report, Path(args.out) / "reports" / spec.name)
    print()
    print(render_markdown(report))
    from .publish import log_report, where_lines

    run = log_report(
        report,
        paths,
        spec=spec,
        tracking_uri=uri,
        spool_root=args.spool,
        close_timeout=args.store_timeout,
    )
    print("\n".join(where_lines(run, spec, paths["md"], args.spool)))
    return 0


def _report(args: argparse.Namespace) -> int:
    spec = find_spec(args.spec, args.specs)
    if args.from_spool:
        runs = collect_runs(spec, spool_root=args.spool)
    else:
        uri = args.tracking_uri or default_tracking_uri(args.spool)
        try:
            runs = call_with_deadline(
                lambda: collect_runs(spec, tracking_uri=uri),
                args.store_timeout,
                "reading the runs",
                uri,
            )
        except TimeoutError as e:
            raise TimeoutError(f"{e}: report from the local spool with --from-spool") from e
    report = build_report(spec, runs)
    out = Path(args.out) if args.out else Path("mtlbench-out") / "reports" / spec.name
    paths = write_report(report, out)
    print(render_markdown(report))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    from .publish import log_report, report_store, where_lines

    store = report_store(args.tracking_uri, args.spool, from_spool=args.from_spool)
    run = log_report(
        report,
        paths,
        spec=spec,
        tracking_uri=store,
        spool_root=args.spool,
        close_timeout=args.store_timeout,
    )
    print("\n".join(where_lines(run, spec, None, args.spool)))
    return 0


def _ui(args: argparse.Namespace) -> int:
    uri = args.tracking_uri or default_tracking_uri(args.spool)
    exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    if not _mlflow_available() or not Path(exe).exists():
        raise ImportError("the MLflow UI needs mlflow: pip install 'mtlbench[mlflow]'")
    # one worker: a UI for one person (MLflow's default of 4 holds ~4x the memory), and the
    # server says "running on" only once it accepts connections
    cmd = [exe, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)]
    cmd += ["--workers", "1"]
    print(
        f"MLflow UI for {redact_uri(uri)} on http://127.0.0.1:{args.port} (Ctrl-C stops it)",
        file=sys.stderr,
    )
    # The server and its workers run in their own process group, stopped with it whatever ends
    # this process: Ctrl-C, SIGTERM (a service manager, `kill`) or SIGHUP (a closed terminal).
    env = os.environ.copy()
    # MLflow's job runner (GenAI evaluation jobs: 8 more processes, ~2 GB) serves nothing a
    # benchmark's runs need; the user's own setting wins
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    server = subprocess.Popen(cmd, env=env, start_new_session=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        from .publish import benchmark_links  # while the server starts: each benchmark's view

        for name, link in benchmark_links(uri, args.port, args.specs, timeout=args.store_timeout):
            print(f"  {name}: {link}", file=sys.stderr)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_group(server)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group of ``proc``, SIGKILL if it is not gone in 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            os.killpg(proc.pid, 0)  # workers left in the group?
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue


def _sync(args: argparse.Namespace) -> int:
    from mtltrain.tracking import sync

    ids = sync(args.path, args.tracking_uri)
    uri = args.tracking_uri or default_tracking_uri(args.path)
    print(f"synced {len(ids)} run(s) to {redact_uri(uri)}")
    return 0


_COMMANDS = {"list": _list, "run": _run, "report": _report, "ui": _ui, "sync": _sync}
_COMMANDS["init-spec"] = initspec.command


def _exit_as_rank(code: int) -> None:
    """End a rank of a distributed job (``--nproc`` children, torchrun) without the
    interpreter's finalisation: fresh-clone CI runs saw a rank whose run had finished abort
    there ("terminate called without an active exception", SIGABRT: a C++ thread destroyed
    while joinable), failing the job. Everything is written and closed by now; the job has
    been left (``mtltrain.distributed.shutdown``) and the output streams are flushed first."""
    distributed = sys.modules.get("mtltrain.distributed")  # (not imported: not a rank)
    if distributed is None or distributed.env() is None:
        sys.exit(code)
    distributed.end_rank(code)


if __name__ == "__main__":
    _exit_as_rank(main())
