"""One unchanged user script, two backends, picked by configuration; TensorFlow loads lazily."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

USER_SCRIPT = """
import json, sys
import numpy as np
import keras
from frontends.keras import privatize

model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
# Seeded weights from NumPy: keras.utils.set_random_seed probes (imports) TensorFlow.
rng = np.random.default_rng(1)
model.set_weights([rng.normal(0.0, 0.5, w.shape).astype("float32") for w in model.get_weights()])
x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
private = privatize(model, privacy="encrypted_serving")
out = private.predict(x, verbose=0)
print(json.dumps({"backend": private.backend.name, "out": out.tolist(), "keras": model.predict(x, verbose=0).tolist(),
                  "tensorflow_loaded": "tensorflow" in sys.modules}))
"""


def _run(cwd: Path, **env: str) -> dict:
    script = cwd / "user_script.py"
    script.write_text(USER_SCRIPT)
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", **env)
    full_env.pop("PRIVACY_BRIDGE_BACKEND", None) if "PRIVACY_BRIDGE_BACKEND" not in env else None
    done = subprocess.run([sys.executable, str(script)], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_same_script_runs_on_either_backend_by_configuration(tmp_path):
    by_env = _run(tmp_path, PRIVACY_BRIDGE_BACKEND="tf-pond", KERAS_BACKEND="torch")
    (tmp_path / "pyproject.toml").write_text('[tool.privacy-bridge]\nbackend = "torch-spdz"\n')
    by_file = _run(tmp_path, KERAS_BACKEND="torch")
    assert by_env["backend"] == "tf-pond"
    assert by_file["backend"] == "torch-spdz"
    for result in (by_env, by_file):
        np.testing.assert_allclose(result["out"], result["keras"], atol=2e-3)
    np.testing.assert_allclose(by_env["out"], by_file["out"], atol=4e-3)
    # TensorFlow is not imported for torch work (Keras on torch, torch-spdz): checked on the
    # torch-spdz run above rather than in a process of its own (each costs seconds of imports)
    assert by_env["tensorflow_loaded"] is True
    assert by_file["tensorflow_loaded"] is False
