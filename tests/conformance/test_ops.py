"""Every op on every registered backend equals the plaintext reference within its tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.ir import PrivacyMode, load_program, save_program
from bridge.reference import run_reference
from bridge.registry import get_backend
from tests.conformance.cases import TOLERANCE, all_cases
from tests.conftest import ALL_BACKENDS, SECURE_BACKENDS

CASES = all_cases()

#: the one place where a backend's gaps are listed: backend -> {op kind: reason}
EXCLUDED: dict[str, dict[str, str]] = {}


def run_on(backend_name: str, case, program=None, weights=None):
    backend = get_backend(backend_name)
    mode = PrivacyMode.NONE if backend_name == "plaintext" else PrivacyMode.ENCRYPTED_SERVING
    program = (program or case.program).model_copy(update={"privacy": mode})
    executable = backend.prepare(program, weights if weights is not None else case.weights)
    try:
        return executable.run(case.inputs).outputs["y"]
    finally:
        executable.close()


def test_every_opset_op_has_a_case():
    from bridge.ir.ops import OP_KINDS

    assert {c.kind for c in CASES} == set(OP_KINDS)


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op_matches_reference(backend_name, case):
    if case.kind in EXCLUDED.get(backend_name, {}):
        pytest.skip(EXCLUDED[backend_name][case.kind])
    expected = run_reference(case.program, case.weights, case.inputs)["y"]
    got = run_on(backend_name, case)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=TOLERANCE[case.kind], rtol=0)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_saved_program_agrees_across_backends(case, tmp_path):
    """The same JSON+npz Program, loaded once, gives the same answer on every backend."""
    save_program(tmp_path, case.program, case.weights)
    program, weights = load_program(tmp_path)
    expected = run_reference(program, weights, case.inputs)["y"]
    results = {name: run_on(name, case, program, weights) for name in SECURE_BACKENDS}
    for name, got in results.items():
        np.testing.assert_allclose(got, expected, atol=TOLERANCE[case.kind], rtol=0, err_msg=name)
    names = list(results)
    for a, b in zip(names, names[1:]):
        np.testing.assert_allclose(results[a], results[b], atol=2 * TOLERANCE[case.kind], rtol=0)
