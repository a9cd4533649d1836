"""Optional solver libraries, imported only when a method that needs one is built."""

from __future__ import annotations

from types import ModuleType


def require_scipy(method: str) -> ModuleType:
    """``scipy.optimize``, or an ImportError that says which extra to install."""
    try:
        import scipy.optimize
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the {method} method needs SciPy's solvers: pip install 'mtlbalance[solvers]' "
            f"(or pip install scipy)"
        ) from err
    return scipy.optimize
