"""The Keras front end: ``to_ir`` reads a model into the IR, ``privatize`` runs it privately."""

from frontends.keras.importer import LAYER_RULES, UnsupportedLayerError, to_ir
from frontends.keras.privatize import PrivateModel, privatize

__all__ = ["LAYER_RULES", "PrivateModel", "UnsupportedLayerError", "privatize", "to_ir"]
