"""Optional solver libraries, imported only when a method that needs one is built or used."""

from __future__ import annotations

from types import ModuleType

_MISSING = False  # set once SciPy was found missing (a failed import is not cached by Python)


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


def optional_scipy() -> ModuleType | None:
    """``scipy.optimize`` where SciPy is installed (the ``solvers`` extra), else None: for
    methods that have a torch fallback and use SciPy only because it is faster."""
    global _MISSING
    if _MISSING:
        return None
    try:
        import scipy.optimize
    except ImportError:
        _MISSING = True
        return None
    return scipy.optimize
