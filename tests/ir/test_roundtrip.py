"""Saving and loading a Program is exact: structure equal, weights bit-for-bit, dtypes kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings

from bridge.ir import load_program, program_from_json, save_program
from bridge.ir.io import STRUCTURE_FILE, WEIGHTS_FILE
from tests.ir.strategies import programs


def _assert_same_weights(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        assert got[name].shape == value.shape, name
        # Bitwise: -0.0 and subnormals must survive, not merely compare equal.
        assert got[name].tobytes() == value.tobytes(), name
        assert np.array_equal(got[name], value), name


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(extreme_weights=True))
def test_random_program_round_trips_exactly(drawn):
    program, weights = drawn
    with tempfile.TemporaryDirectory() as tmp:
        save_program(tmp, program, weights)
        loaded, loaded_weights = load_program(tmp)
    assert loaded == program
    assert loaded.model_dump() == program.model_dump()
    _assert_same_weights(loaded_weights, weights)


@settings(max_examples=60, deadline=None)
@given(programs())
def test_json_alone_round_trips(drawn):
    program, _ = drawn
    text = program.model_dump_json()
    again = program_from_json(text)
    assert again == program
    assert again.model_dump_json() == text


def test_weight_names_with_slashes_survive_npz(tmp_path):
    from tests.ir.test_validation import tiny_program

    program, weights = tiny_program()
    assert any("/" in name for name in weights)
    save_program(tmp_path, program, weights)
    assert (tmp_path / STRUCTURE_FILE).is_file() and (tmp_path / WEIGHTS_FILE).is_file()
    assert json.loads((tmp_path / STRUCTURE_FILE).read_text())["schema_version"] == 1
    loaded, loaded_weights = load_program(tmp_path)
    assert loaded == program
    _assert_same_weights(loaded_weights, weights)


_SAVE_TINY = """
import sys
from bridge.ir import save_program
from tests.ir.test_validation import tiny_program
save_program(sys.argv[1], *tiny_program())
"""


def test_saved_files_are_byte_stable_across_processes(tmp_path):
    # Party roles are a set, which iterates in per-process hash order: the file must not.
    root = Path(__file__).resolve().parents[2]
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        subprocess.run([sys.executable, "-c", _SAVE_TINY, str(tmp_path / seed)], cwd=root, env=env, check=True)
    texts = {(tmp_path / s / STRUCTURE_FILE).read_bytes() for s in ("1", "2", "3")}
    assert len(texts) == 1


def test_save_load_save_is_a_fixed_point(tmp_path):
    from tests.ir.test_validation import tiny_program

    save_program(tmp_path / "a", *tiny_program())
    save_program(tmp_path / "b", *load_program(tmp_path / "a"))
    assert (tmp_path / "a" / STRUCTURE_FILE).read_bytes() == (tmp_path / "b" / STRUCTURE_FILE).read_bytes()
    with np.load(tmp_path / "a" / WEIGHTS_FILE) as a, np.load(tmp_path / "b" / WEIGHTS_FILE) as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_weights_from_other_numpy_writers_load_exactly(tmp_path):
    # The loader reads archives itself (no np.load): compressed members, Fortran order and
    # big-endian arrays must still come back bit-for-bit, as native-order arrays.
    from tests.ir.test_validation import tiny_program

    program, weights = tiny_program()
    save_program(tmp_path, program, weights)
    names = sorted(weights)
    arrays = {
        "w0": np.asfortranarray(weights[names[0]].astype(">f4")) if weights[names[0]].ndim > 1
        else weights[names[0]].astype(">f4"),
        "w1": np.asfortranarray(weights[names[1]]),
        "__names__": np.array(names, dtype=np.str_),
    }
    np.savez_compressed(tmp_path / WEIGHTS_FILE, **arrays)
    loaded, loaded_weights = load_program(tmp_path)
    assert loaded == program
    for name in names:
        assert loaded_weights[name].dtype.isnative
        assert np.array_equal(loaded_weights[name], weights[name]), name
        assert loaded_weights[name].flags.writeable
