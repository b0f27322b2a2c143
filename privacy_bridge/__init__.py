"""privacy-bridge's public API under one import name.

    from privacy_bridge import privatize, to_ir

The implementation keeps its layout (``bridge`` the protocol-neutral IR and MPC,
``backends`` the engines, ``frontends`` Keras and the CLI); this package only
re-exports what a user needs, so that scripts do not depend on that layout.
``connect`` is the client of a served model (``privacy-bridge serve``).
"""

from __future__ import annotations

from bridge.backend import BackendError
from bridge.config import ConfigError
from bridge.registry import available_backends
from frontends.keras import PrivateModel, UnsupportedLayerError, connect, privatize, to_ir

__all__ = [
    "BackendError",
    "ConfigError",
    "PrivateModel",
    "UnsupportedLayerError",
    "available_backends",
    "connect",
    "privatize",
    "to_ir",
]
