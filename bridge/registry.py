"""Backend discovery through the ``privacy_bridge.backends`` entry-point group.

A third-party package adds a backend by declaring, in its own pyproject::

    [project.entry-points."privacy_bridge.backends"]
    my-backend = "my_package:MyBackend"

Listing names never imports a backend, so listing stays fast and TensorFlow is
only imported when tf-pond is actually loaded.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from bridge.backend import Backend, BackendError

ENTRY_POINT_GROUP = "privacy_bridge.backends"

_extra: dict[str, type[Backend]] = {}


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> list[str]:
    """Names of every installed backend, sorted."""
    return sorted(set(_entry_points()) | set(_extra))


def register_backend(name: str, backend_class: type[Backend]) -> None:
    """Register a backend in-process (tests, notebooks); packages should use entry points."""
    _extra[name] = backend_class
    get_backend.cache_clear()


@cache
def get_backend(name: str) -> Backend:
    """The backend instance registered under ``name``."""
    if name in _extra:
        return _extra[name]()
    eps = _entry_points()
    if name not in eps:
        raise BackendError(
            f"unknown backend {name!r}; installed backends are {available_backends()}. "
            "Install the package that provides it, or pick one of these."
        )
    backend_class = eps[name].load()
    backend = backend_class()
    if not isinstance(backend, Backend):
        raise BackendError(f"entry point {name!r} gave {backend_class!r}, which is not a bridge Backend")
    return backend
