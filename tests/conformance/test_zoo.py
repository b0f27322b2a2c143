"""Whole Keras models through every backend, and across frameworks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bridge.ir import PrivacyMode, load_program
from bridge.reference import run_reference
from bridge.registry import get_backend
from frontends.keras import privatize
from tests.conformance.zoo import ZOO, zoo_input
from tests.conftest import ALL_BACKENDS

ROOT = Path(__file__).resolve().parents[2]
#: whole models chain several approximations: a looser bound than single ops
ZOO_TOLERANCE = 2e-2


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
@pytest.mark.parametrize("model_name", list(ZOO))
def test_zoo_model_matches_keras(backend_name, model_name):
    model = ZOO[model_name]()
    x = zoo_input(model_name)
    expected = model.predict(x, verbose=0)
    privacy = "none" if backend_name == "plaintext" else "encrypted_serving"
    private = privatize(model, privacy=privacy, backend=backend_name)
    got = private.predict(x, batch_size=4, verbose=0)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=ZOO_TOLERANCE if privacy != "none" else 1e-5, rtol=0)


def _export(keras_backend: str, out: Path) -> None:
    env = dict(os.environ, KERAS_BACKEND=keras_backend, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(
        [sys.executable, "-m", "tests.conformance.zoo", str(out)], cwd=ROOT, env=env, check=True, timeout=300
    )


@pytest.mark.parametrize(
    ("keras_backend", "serving_backend"), [("torch", "tf-pond"), ("tensorflow", "torch-spdz")]
)
def test_model_exported_under_one_framework_served_by_the_other(keras_backend, serving_backend, tmp_path):
    if serving_backend not in ALL_BACKENDS:
        pytest.skip(f"{serving_backend} is not installed")
    _export(keras_backend, tmp_path)
    for name in ZOO:
        program, weights = load_program(tmp_path / name)
        x = np.load(tmp_path / name / "x.npy")
        keras_out = np.load(tmp_path / name / "keras.npy")
        reference = run_reference(program, weights, {"x": x} if "x" in program.graph.inputs else
                                  {next(iter(program.graph.inputs)): x})
        (ref_out,) = reference.values()
        np.testing.assert_allclose(ref_out, keras_out, atol=1e-5)
        served = get_backend(serving_backend).prepare(
            program.model_copy(update={"privacy": PrivacyMode.ENCRYPTED_SERVING}), weights
        )
        (out,) = served.run({next(iter(program.graph.inputs)): x}).outputs.values()
        np.testing.assert_allclose(out, keras_out, atol=ZOO_TOLERANCE, err_msg=f"{name} on {serving_backend}")
