"""What the demo shows: Keras' progress bar during encrypted training, a plot where coinciding
curves stay visible, and no TensorFlow chatter that the user did not ask for."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from frontends.cli.demo import DemoData, Row, build_model, draw_curves, load_digits_data, run_training
from frontends.keras.quiet import RETRACING, no_retracing_warnings, quiet_tf_startup
from tests.conftest import SECURE_BACKENDS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("backend", SECURE_BACKENDS)
def test_encrypted_training_step_shows_keras_progress(backend, capsys):
    full = load_digits_data(limit_train=48)
    data = DemoData(full.x_train, full.y_train, full.x_test[:20], full.y_test[:20])
    initial = build_model().get_weights()
    row = run_training(initial, data, backend, epochs=1, verbose=2)
    out = capsys.readouterr().out
    assert re.search(r"^2/2 - \d+s - .*accuracy: [\d.]+ - loss: [\d.]+$", out, re.M), out
    assert row is not None and len(row.curve) == 1


def test_coinciding_curves_get_distinct_dashes_and_markers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = [0.5, 0.7, 0.8]
    rows = [Row("plaintext Keras", "-", 0.9, 1.0, curve=curve),
            Row("encrypted training", "torch-spdz", 0.9, 1.0, curve=list(curve)),
            Row("federated (secure aggregation)", "torch-spdz", 0.9, 1.0, curve=list(curve))]
    fig, ax = plt.subplots()
    try:
        lines = draw_curves(ax, rows)
        styles = [(str(line.get_linestyle()), line.get_marker()) for line in lines]
        assert len(set(styles)) == 3 and len({m for _, m in styles}) == 3
        assert [line.get_fillstyle() for line in lines] == ["full", "none", "none"]
        # the plaintext line is the widest and lowest, so the dashed ones on top leave it visible
        assert lines[0].get_linewidth() > lines[1].get_linewidth()
        assert lines[0].get_zorder() < lines[1].get_zorder() < lines[2].get_zorder()
    finally:
        plt.close(fig)


def test_plot_curves_writes_a_png(tmp_path):
    from frontends.cli.demo import plot_curves

    rows = [Row("plaintext Keras", "-", 0.9, 1.0, curve=[0.5, 0.7]), Row("serving", "tf-pond", 0.9, 1.0)]
    path = plot_curves(rows, str(tmp_path / "curves.png"))
    assert path is not None and Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_curves([rows[1]], str(tmp_path / "none.png")) is None  # no curve, no plot


def test_retracing_warnings_are_hidden_only_inside_our_calls(caplog):
    logger = logging.getLogger("tensorflow")
    level = logger.level
    message = f"5 out of the last 9 calls to <function f> {RETRACING}. Tracing is expensive"
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        with no_retracing_warnings():
            logger.warning(message)
            logger.warning("a different TensorFlow warning")
        logger.warning(message)  # the user's own call: shown
    texts = [r.getMessage() for r in caplog.records if r.name == "tensorflow"]
    assert texts == ["a different TensorFlow warning", message]
    assert logger.level == level and not logger.filters


def test_the_user_s_tf_log_level_wins():
    env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    quiet_tf_startup(env)
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "0"}
    env = {}
    quiet_tf_startup(env)
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "1"}


def test_importing_privacy_bridge_keeps_tf_startup_lines_out_but_not_the_user_s_warnings(tmp_path):
    script = (
        "import warnings, logging\n"
        "import torch\n"
        "import privacy_bridge\n"
        "import tensorflow as tf\n"
        "tf.constant(1) + 1\n"
        "warnings.warn('the user warns')\n"
        "logging.getLogger('tensorflow').warning('the user logs through TF')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    env.update(PYTHONPATH=str(ROOT), KERAS_BACKEND="torch")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cpu_feature_guard" not in done.stderr and "absl::InitializeLog" not in done.stderr, done.stderr
    assert "the user warns" in done.stderr and "the user logs through TF" in done.stderr
