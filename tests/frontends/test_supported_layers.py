"""The README's supported-layers table is the one generated from the importer's rule tables."""

from __future__ import annotations

from pathlib import Path

from bridge.ir.ops import OP_KINDS, SERVING_ONLY
from frontends.keras.importer import LAYER_RULES
from frontends.keras.supported_layers import LAYER_OPS, block, readme_block, training_status

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_table_is_the_generated_one():
    current = readme_block(README.read_text())
    assert current is not None, "README.md lost its supported-layers markers"
    assert current == block(), "README table drifted: run python -m frontends.keras.supported_layers --write"


def test_every_importer_rule_is_in_the_table_with_known_op_kinds():
    assert set(LAYER_OPS) == set(LAYER_RULES)
    assert all(kind in OP_KINDS for kinds in LAYER_OPS.values() for kind in kinds)
    for layer in LAYER_RULES:
        assert f"| `{layer}` |" in block()


def test_training_column_follows_the_backward_rules():
    assert training_status("Dense") == "yes"
    assert training_status("Conv1D") == "yes"  # an opset-v2 kind with backward rules
    assert training_status("BatchNormalization") == "frozen only"
    serving_only = [layer for layer, kinds in LAYER_OPS.items() if any(k in SERVING_ONLY for k in kinds)]
    assert serving_only and all(training_status(layer) == "no" for layer in serving_only)
