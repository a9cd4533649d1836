"""The batched engines' vmap calls leave other threads' warnings alone, and name the ops PyTorch
loops over when its fallback warnings are on."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator

import pytest
import torch

from mtlbalance.engines.base import VmapCall


class _PauseInBackward(torch.autograd.Function):
    """Identity whose backward lets another thread run (and waits for it) mid-call."""

    go = threading.Event()
    done = threading.Event()

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        _PauseInBackward.go.set()
        _PauseInBackward.done.wait(10)
        return grad


def test_a_warning_of_another_thread_during_the_call_keeps_its_own_filters() -> None:
    """A library (urllib3 in the report) warns on the tracking thread while the main thread is
    inside a vmap backward; its module's ignore filter must still apply: the warning is not
    taken in and shown again."""
    _PauseInBackward.go.clear()
    _PauseInBackward.done.clear()

    def other() -> None:
        _PauseInBackward.go.wait(10)
        warnings.warn_explicit(
            "from the tracking thread", UserWarning, "/site/quietlib/socks.py", 1,
            module="quietlib.socks",
        )  # fmt: skip
        _PauseInBackward.done.set()

    x = torch.randn(3, requires_grad=True)
    y = _PauseInBackward.apply(x).sum()
    thread = threading.Thread(target=other)
    thread.start()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", module="quietlib")
        (grad,) = VmapCall("batched")([y], [x], torch.tensor([1.0, 2.0]), False)
    thread.join(10)
    assert _PauseInBackward.done.is_set()  # the other thread did warn during the call
    assert grad is not None and torch.equal(grad, torch.tensor([[1.0] * 3, [2.0] * 3]))
    assert [str(w.message) for w in seen] == []


@pytest.fixture
def fallback_warnings_on() -> Iterator[None]:
    before = torch._C._debug_only_are_vmap_fallback_warnings_enabled()
    torch._C._debug_only_display_vmap_fallback_warnings(True)
    yield
    torch._C._debug_only_display_vmap_fallback_warnings(before)


@pytest.mark.usefixtures("fallback_warnings_on")
def test_with_fallback_warnings_on_the_slow_ops_are_named_once() -> None:
    x = torch.randn(3, 3, requires_grad=True)
    call = VmapCall("batched")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            y = torch.linalg.det(x @ x.T + torch.eye(3))
            call([y], [x], torch.ones(2), False)
    messages = [str(w.message) for w in seen]
    assert len(messages) == 1, messages
    assert messages[0].startswith("mtlbalance batched engine: no vmap batching rule for aten::")
    assert "exact, but slower" in messages[0]
