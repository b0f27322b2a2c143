"""privacy-bridge core: IR, placement, reference executor, backend interface and registry.

Nothing here imports a backend or a front end; backends are found through the
``privacy_bridge.backends`` entry-point group.
"""

__version__ = "0.1.0"
