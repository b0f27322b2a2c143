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
from bridge.config import Resolved, default_backend, resolve_backend
from bridge.ir import PrivacyMode

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


def configured_backend(explicit: str | None, privacy: PrivacyMode | str) -> tuple[Backend, Resolved]:
    """The backend that runs ``privacy``, chosen by argument, configuration or default
    (``bridge.config``), with where its name came from.

    A configured backend (variable or file) picks the engine of the *private* modes: when
    it cannot run ``privacy="none"``, the plaintext reference runs that mode, so that
    configuring tf-pond for a project never stops the plaintext mode from working.
    An explicit ``backend=`` argument is always taken at its word.  Errors about the
    backend say which argument, variable or file named it.
    """
    mode = PrivacyMode(privacy)
    resolved = resolve_backend(explicit, mode)
    engine = _load(resolved)
    modes = engine.capabilities().privacy_modes
    if mode == PrivacyMode.NONE and mode not in modes and resolved.configured:
        fallback = Resolved(default_backend(mode), "default")
        return _load(fallback), fallback
    if mode not in modes:
        supported = sorted(m.value for m in modes)
        raise BackendError(
            f"privacy={mode.value!r} is not available on backend {engine.name!r} yet "
            f"(named by {resolved.source}); it supports {supported}. "
            "Pick another backend with backend=..., the PRIVACY_BRIDGE_BACKEND variable or "
            "[tool.privacy-bridge] backend in pyproject.toml."
        )
    return engine, resolved


def _load(resolved: Resolved) -> Backend:
    try:
        return get_backend(resolved.backend)
    except (BackendError, ImportError) as exc:
        raise BackendError(f"{exc} (the name {resolved.backend!r} came from {resolved.source})") from exc
