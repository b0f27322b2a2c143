"""The Keras front end: ``to_ir`` reads a model into the IR, ``privatize`` runs it privately."""

from frontends.keras.quiet import quiet_tf_startup

quiet_tf_startup()  # before anything here imports TensorFlow (tf-pond does so lazily)

from frontends.keras.importer import LAYER_RULES, UnsupportedLayerError, to_ir  # noqa: E402
from frontends.keras.privatize import PrivateModel, privatize  # noqa: E402
from frontends.keras.client import connect  # noqa: E402

__all__ = ["LAYER_RULES", "PrivateModel", "UnsupportedLayerError", "connect", "privatize", "to_ir"]
