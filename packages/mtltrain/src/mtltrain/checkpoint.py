"""Checkpoint files: written atomically with a checksum, read as data only.

A checkpoint is a file a user may be handed, so reading one must never run code and a damaged
one must say so instead of loading garbage:

* **Loading** uses ``torch.load(weights_only=True)``: tensors and plain Python values only. A
  file that holds anything else (a pickled object whose loading could run code) is refused
  with a :class:`CheckpointError` naming the file; nothing in it is executed.
* **Checksum.** The file is ``torch.save``'s bytes followed by a 48-byte trailer
  ``MAGIC (8) | payload length (8, little-endian) | SHA-256 of the payload (32)``. A truncated
  copy or a flipped bit fails the check and is reported with the path (torch's own zip reader
  loads a flipped bit in tensor data silently).
* **Writing** goes to an exclusive temporary file with an unpredictable name in the same
  directory (``O_EXCL``: never follows a planted symlink), is flushed and fsync'ed, then
  renamed over the target: a kill at any moment leaves either the old file or the new one.
  On failure (full disk, ...) the temporary file is removed and the error names the target.

Files written before the checksum existed (no trailer) still load, as data only, with their
NumPy RNG state allowed; they get no integrity check.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import pickle
import random
import shutil
import struct
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BEST_MODEL",
    "CHECKPOINT_FORMAT",
    "LAST_CHECKPOINT",
    "CheckpointError",
    "atomic_save",
    "load_checkpoint_info",
    "load_file",
    "load_trainer_state",
    "rng_state",
    "set_rng_state",
]

#: version of the trainer's checkpoint layout (the keys of ``Trainer.state_dict``)
CHECKPOINT_FORMAT = 1
LAST_CHECKPOINT = "last.pt"
BEST_MODEL = "best_model.pt"
TRAINER_KEYS = (
    "model", "optimizer", "scheduler", "balancer", "epoch", "batches_done", "step", "history",
    "best", "first_val", "bad_epochs", "stop", "loss_scale", "rng", "tracker_run_id", "config",
)  # fmt: skip

MAGIC = b"MTLCKPT1"
_TRAILER = struct.Struct("<8sQ32s")  # magic, payload length, sha256 digest


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: damaged, not a checkpoint, or holding objects
    that loading would have to execute. The message names the file and what to do."""


class _HashingWriter:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None  # torch reports a failed write only as "pos" errors

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += view.nbytes
        try:
            return int(self._f.write(view))
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()


def _write_failure(path: Path, error: BaseException) -> OSError:
    """An OSError for a failed save that names the file and, when the disk is full, says so."""
    code = getattr(error, "errno", None)
    reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0]
    with contextlib.suppress(OSError):
        if code is None and shutil.disk_usage(path.parent).free < 1 << 20:
            code, reason = errno.ENOSPC, os.strerror(errno.ENOSPC)
    hint = " (free some space, or point checkpoint_dir elsewhere)" if code == errno.ENOSPC else ""
    return OSError(
        code or errno.EIO,
        f"could not write checkpoint {path}: {reason}{hint}; the previous file, if any, is "
        "unchanged",
    )


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` with a checksum trailer, atomically (see the module
    doc). Raises OSError naming ``path`` when the file cannot be written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # exclusive create (O_EXCL: fails on any existing name, a symlink included), a name nobody
    # can predict, the umask's permissions (unlike mkstemp's 0600)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    writer: _HashingWriter | None = None
    try:
        with open(tmp, "xb") as f:
            writer = _HashingWriter(f)
            torch.save(obj, writer)  # type: ignore[arg-type]
            f.write(_TRAILER.pack(MAGIC, writer.size, writer.sha.digest()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError | RuntimeError):  # torch reports a failed write as RuntimeError
            cause = writer.error if writer is not None and writer.error is not None else e
            raise _write_failure(path, cause) from cause
        raise
    return path


def _legacy_globals() -> list[Any]:
    """What a checkpoint written before the checksum needs beyond weights-only types: the
    NumPy RNG state (an ndarray of uint32)."""
    try:
        import numpy as np
    except ImportError:
        return []
    reconstruct = getattr(getattr(np, "_core", np.core), "multiarray")._reconstruct  # noqa: B009
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_file(path: str | os.PathLike[str]) -> Any:
    """Read a file written by :func:`atomic_save` as data only (``weights_only=True``),
    after checking its checksum. Raises FileNotFoundError or :class:`CheckpointError`, each
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    data = path.read_bytes()
    payload: bytes | memoryview = data
    legacy = True
    if len(data) >= _TRAILER.size:
        magic, length, digest = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
        if magic == MAGIC:
            legacy = False
            payload = memoryview(data)[: len(data) - _TRAILER.size]
            if length != len(payload) or hashlib.sha256(payload).digest() != digest:
                raise CheckpointError(
                    f"{path} is damaged: its checksum does not match its contents (a partial "
                    "copy, a disk error or an edited file). Resume from another copy, or delete "
                    "it to start over"
                )
    if legacy and not zipfile.is_zipfile(io.BytesIO(data)):
        raise CheckpointError(
            f"{path} is not a checkpoint (no checksum trailer and not a torch file) or it was cut "
            "off while being copied: resume from another copy, or delete it to start over"
        )
    try:
        with torch.serialization.safe_globals(_legacy_globals() if legacy else []):
            return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain Python values ({first[:200]}); "
            "mtltrain loads checkpoints as data only, because loading such objects could run "
            "code. Do not use a checkpoint from a source you do not trust; delete it to start over"
        ) from e
    except (EOFError, RuntimeError, ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(e).__name__}: "
            f"{str(e).strip()[:200]}); it is damaged or not a checkpoint: resume from another "
            "copy, or delete it to start over"
        ) from e


def load_trainer_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A trainer checkpoint (``path``: the file or its directory), checked to hold every
    entry :meth:`Trainer.load_state_dict` needs."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    state = load_file(path)
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path} is not an mtltrain checkpoint (no 'format' entry)")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']!r}, not {CHECKPOINT_FORMAT}: it was "
            "written by another mtltrain version"
        )
    missing = [k for k in TRAINER_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} lacks {missing}: it is not a complete mtltrain checkpoint (delete it to "
            "start over)"
        )
    return state


def load_checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The bookkeeping part of a checkpoint (epoch, step, tracker run id, config), e.g. to
    reopen the tracked run before resuming. ``path``: a checkpoint file or directory."""
    ckpt = load_trainer_state(path)
    return {k: ckpt[k] for k in ("epoch", "batches_done", "step", "tracker_run_id", "config")}


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain Python values (a checkpoint loads as data only)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    with contextlib.suppress(ImportError):
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (or what a checkpoint before it held)."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        if isinstance(s, Mapping):
            keys = np.asarray(s["keys"].numpy(), dtype=np.uint32)
            np.random.set_state((s["kind"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
        else:  # a checkpoint written before the RNG state was stored as plain values
            np.random.set_state(s)
