"""The plaintext backend: registered, validates first, runs the reference, refuses privacy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from bridge.backend import BackendError, RunResult
from bridge.ir import IRValidationError, PrivacyMode
from bridge.ir.ops import OP_KINDS
from bridge.plaintext import PlaintextBackend
from bridge.reference import InputValidationError, run_reference
from bridge.registry import get_backend
from tests.ir.strategies import programs
from tests.ir.test_validation import tiny_program


def test_registered_under_its_entry_point():
    backend = get_backend("plaintext")
    assert isinstance(backend, PlaintextBackend) and backend.name == "plaintext"
    caps = backend.capabilities()
    assert caps.privacy_modes == frozenset({PrivacyMode.NONE})
    assert caps.ops == frozenset(OP_KINDS)


def test_run_returns_the_reference_outputs():
    program, weights = tiny_program()
    x = np.random.default_rng(1).normal(size=(5, 4))
    result = PlaintextBackend().prepare(program, weights).run({"x": x})
    assert isinstance(result, RunResult) and result.stats is None
    assert list(result.outputs) == ["y"]
    np.testing.assert_array_equal(result.outputs["y"], run_reference(program, weights, {"x": x})["y"])
    h = x @ weights["fc/kernel"].astype(np.float64) + 1.0
    np.testing.assert_allclose(result.outputs["y"], np.maximum(h, 0.0), rtol=1e-15)


def test_prepared_weights_are_a_copy():
    program, weights = tiny_program()
    x = np.ones((1, 4))
    executable = PlaintextBackend().prepare(program, weights)
    before = executable.run({"x": x}).outputs["y"]
    weights["fc/bias"][:] = 100.0
    np.testing.assert_array_equal(executable.run({"x": x}).outputs["y"], before)


def test_prepare_validates_program_and_weights():
    program, weights = tiny_program()
    with pytest.raises(IRValidationError, match=r"weights are missing for parameters \['fc/bias'\]"):
        PlaintextBackend().prepare(program, {"fc/kernel": weights["fc/kernel"]})
    bad = program.model_copy(update={"placement": program.placement.model_copy(update={"param_owner": "eve"})})
    with pytest.raises(IRValidationError, match=r"unknown party 'eve'"):
        PlaintextBackend().prepare(bad, weights)


@pytest.mark.parametrize("mode", [m for m in PrivacyMode if m != PrivacyMode.NONE])
def test_private_modes_are_refused_with_the_alternative(mode):
    program, weights = tiny_program()
    with pytest.raises(BackendError, match=rf"privacy='{mode.value}' is not available on backend 'plaintext'.*\['none'\]"):
        PlaintextBackend().prepare(program.model_copy(update={"privacy": mode}), weights)


def test_options_are_refused():
    program, weights = tiny_program()
    with pytest.raises(TypeError, match=r"the plaintext backend takes no options, received \['timeout_s'\]"):
        PlaintextBackend().prepare(program, weights, timeout_s=3)


def test_run_checks_inputs():
    program, weights = tiny_program()
    executable = PlaintextBackend().prepare(program, weights)
    with pytest.raises(InputValidationError, match=r"input 'x': expected shape \(batch, 4\), received \(2, 3\)"):
        executable.run({"x": np.zeros((2, 3))})


@settings(max_examples=25, deadline=None)
@given(programs())
def test_random_programs_equal_the_reference(drawn):
    program, weights = drawn
    program = program.model_copy(update={"privacy": PrivacyMode.NONE})
    rng = np.random.default_rng(2)
    inputs = {n: rng.normal(size=(2, *s.feature_shape)) for n, s in program.graph.inputs.items()}
    got = PlaintextBackend().prepare(program, weights).run(inputs).outputs
    expected = run_reference(program, weights, inputs)
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
