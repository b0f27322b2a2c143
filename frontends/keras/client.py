"""The client of a served model: ``connect(cluster, identity=...)``, then ``predict``.

    from privacy_bridge import connect

    client = connect("cluster.toml", identity="alice")
    probabilities = client.predict(x_test)      # what model.predict(x_test) returns

The client secret-shares its input itself (the OS CSPRNG), sends one share to each
compute server, and alone adds their output shares: the servers see shapes and timing,
never the values.  Answers equal Keras' within the fixed-point tolerance (16
fractional bits: a few 1e-4 on a softmax).  Bad input is refused here before anything
is sent (``FixedPointError`` for NaN, inf or out of range; ``ValueError`` for a wrong
shape), and an input that drives the model out of range is refused by the servers with
``FixedPointOverflowError`` naming the layer.  A dead or stalled server makes ``predict``
raise ``ServiceUnavailableError`` naming it within the cluster's ``timeout_s`` of its
silence (never a hang); a slow one, which keeps saying that it works on the request, is
waited for (``bridge.serving.progress``).  Retry when the service is back.  A model that
reads token ids (an integer ``keras.Input`` feeding an Embedding) takes the ids: the
client checks them and one-hot encodes them itself before sharing (``bridge.ir.tokens``).  ``deploy`` is the model owner's side.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bridge.serving.client import ServiceUnavailableError, ServingClient
from bridge.serving.client import deploy as _deploy
from bridge.serving.channel import ServingError

__all__ = ["ServiceUnavailableError", "ServingError", "PrivateClient", "connect", "deploy"]


class PrivateClient(ServingClient):
    """A ``ServingClient`` whose ``predict`` returns float32, as ``model.predict`` does."""

    def predict(self, x: np.ndarray | Mapping[str, np.ndarray], **_: Any) -> np.ndarray | dict[str, np.ndarray]:
        outputs = {k: v.astype(np.float32) for k, v in self.predict_raw(x).items()}
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs


def connect(cluster: str | Path, identity: str | Path | None = None, timeout_s: float | None = None) -> PrivateClient:
    """A client of the service ``cluster`` describes, as ``identity`` (an admitted name, or
    the path of its ``.key``; default ``$PRIVACY_BRIDGE_IDENTITY``)."""
    import os

    identity = identity or os.environ.get("PRIVACY_BRIDGE_IDENTITY")
    if not identity:
        raise ValueError("connect needs identity= (a name the deployment admits, or the path of your .key); "
                         "`privacy-bridge admit --cluster FILE --name NAME` makes one")
    return PrivateClient(cluster, identity, timeout_s)


def deploy(model: Any, cluster: str | Path, identity: str | Path) -> str:
    """Share a Keras model's (or an exported program directory's) weights to the servers
    once; returns the deployed model's digest."""
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        from bridge.ir import load_program

        program, weights = load_program(model)
    else:
        from frontends.keras.importer import to_ir

        if isinstance(model, (str, Path)):
            import keras

            model = keras.models.load_model(model, compile=False)
        program, weights = to_ir(model)
    return _deploy(cluster, program, weights, identity)
