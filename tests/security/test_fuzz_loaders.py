"""Loading a saved program treats both files as untrusted.

Finding 6 of issue 12: mutated ``program.json`` / ``weights.npz`` files ended in
RecursionError, ValueError, ZeroDivisionError, TypeError, OverflowError, BadZipFile,
KeyError, and MemoryError from .npy headers claiming 128 GiB (NumPy allocated before
reading).  Now each is an ``IRValidationError`` naming the problem, and the fuzz runs
execute under an address-space guard so that allocating on a header's word fails them.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.ir import IRValidationError, load_program, program_from_json, save_program, validate_program
from bridge.ir.io import STRUCTURE_FILE, WEIGHTS_FILE
from tests.security.fuzzing import fuzz_program, run_guarded


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[bytes, bytes]:
    directory = tmp_path_factory.mktemp("fuzz_program")
    save_program(directory, *fuzz_program())
    return (directory / STRUCTURE_FILE).read_bytes(), (directory / WEIGHTS_FILE).read_bytes()


@pytest.fixture(scope="module")
def saved_once(saved) -> bytes:
    return saved[0]


def write(directory, structure: bytes | str, weights: bytes) -> None:
    (directory / STRUCTURE_FILE).write_bytes(structure.encode() if isinstance(structure, str) else structure)
    (directory / WEIGHTS_FILE).write_bytes(weights)


def npy(descr: str, shape: str, data: bytes = b"", version: int = 1) -> bytes:
    text = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}"
    text += " " * (63 - len(text) % 64) + "\n"
    length = struct.pack("<H" if version == 1 else "<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + length + text.encode("latin1") + data


def rezip(weights: bytes, replace: dict[str, bytes | None]) -> bytes:
    """The archive with some members replaced (None: removed)."""
    with zipfile.ZipFile(io.BytesIO(weights)) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    for name, body in replace.items():
        if body is None:
            members.pop(name)
        else:
            members[name] = body
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, body in members.items():
            z.writestr(name, body)
    return out.getvalue()


def test_the_fuzzed_program_loads_and_round_trips(tmp_path, saved):
    write(tmp_path, *saved)
    program, weights = load_program(tmp_path)
    expected, expected_weights = fuzz_program()
    assert program == expected
    assert all(np.array_equal(weights[n], expected_weights[n]) for n in expected_weights)
    assert all(weights[n].flags.writeable for n in weights)


# -- weights.npz findings ------------------------------------------------------------------------

def test_a_header_claiming_128_gib_is_refused_before_allocating(tmp_path, saved):
    # 2^34 x 2 float32 = 128 GiB in a 200-byte member; np.load allocated it, then read.
    structure, weights = saved
    write(tmp_path, structure, rezip(weights, {"w0.npy": npy("'<f4'", "(17179869184, 2)", bytes(12))}))
    with pytest.raises(IRValidationError, match=r"'w0.npy': its header promises shape \(17179869184, 2\) of <f4 "
                                                 r"\(137438953472 bytes\), the member holds 12 bytes"):
        load_program(tmp_path)


def test_an_object_dtype_member_is_refused_by_name(tmp_path, saved):
    structure, weights = saved
    write(tmp_path, structure, rezip(weights, {"w1.npy": npy("'|O'", "(1,)", b"\x80\x04K\x01.")}))
    with pytest.raises(IRValidationError, match=r"'w1.npy' has dtype '\|O'; expected a real numeric array"):
        load_program(tmp_path)


def test_a_missing_parameter_member_is_named(tmp_path, saved):
    structure, weights = saved
    write(tmp_path, structure, rezip(weights, {"w3.npy": None}))  # np.load: KeyError
    with pytest.raises(IRValidationError, match=r"lists 8 parameters, but its members do not match: missing \['w3.npy'\]"):
        load_program(tmp_path)


def test_a_weights_file_that_is_not_a_zip_is_refused(tmp_path, saved):
    write(tmp_path, saved[0], b"PK\x03\x04 not really a zip" + bytes(100))  # np.load: BadZipFile
    with pytest.raises(IRValidationError, match=r"weights.npz is not a readable weights archive \(BadZipFile"):
        load_program(tmp_path)


def test_a_corrupted_weight_byte_fails_the_crc(tmp_path, saved):
    structure, weights = saved
    with zipfile.ZipFile(io.BytesIO(weights)) as z:
        info = z.getinfo("w7.npy")
    raw = bytearray(weights)
    raw[info.header_offset + 30 + len("w7.npy") + 20 + 200] ^= 0x40  # a data byte of fc/kernel, past the zip64 extra
    write(tmp_path, structure, bytes(raw))
    with pytest.raises(IRValidationError, match=r"'w7.npy' is not a valid .npy array \(BadZipFile: Bad CRC-32"):
        load_program(tmp_path)


def test_an_oversized_npy_header_length_is_refused_before_reading_it(tmp_path, saved):
    structure, weights = saved
    body = b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**32 - 1) + b"{}"
    write(tmp_path, structure, rezip(weights, {"w2.npy": body}))
    with pytest.raises(IRValidationError, match=r"'w2.npy' has a 4294967295-byte .npy header; at most 10000"):
        load_program(tmp_path)


def test_missing_files_are_validation_errors(tmp_path, saved):
    with pytest.raises(IRValidationError, match=r"cannot read .*program.json: No such file or directory. A saved program"):
        load_program(tmp_path)
    (tmp_path / STRUCTURE_FILE).write_bytes(saved[0])
    with pytest.raises(IRValidationError, match=r"cannot read .*weights.npz"):
        load_program(tmp_path)


# -- program.json findings -----------------------------------------------------------------------

def _edited(structure: bytes, edit) -> str:
    doc = json.loads(structure)
    edit(doc)
    return json.dumps(doc)


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path, saved):
    text = _edited(saved[0], lambda d: d.update(name="@DEEP@")).replace('"@DEEP@"', "[" * 100_000 + "]" * 100_000)
    write(tmp_path, text, saved[1])
    with pytest.raises(IRValidationError, match=r"nests deeper than"):
        load_program(tmp_path)
    shallow = _edited(saved[0], lambda d: d.update(name="@DEEP@")).replace('"@DEEP@"', "[" * 40 + "]" * 40)
    with pytest.raises(IRValidationError, match=r"program file nests deeper than 32 levels"):
        program_from_json(shallow)


def test_a_4400_digit_integer_is_refused_not_a_value_error(tmp_path, saved):
    text = _edited(saved[0], lambda d: d["training"].update(epochs="@BIG@")).replace('"@BIG@"', "9" * 4400)
    write(tmp_path, text, saved[1])
    with pytest.raises(IRValidationError, match=r"bad number: integer 999999999999\.\.\.\(4400 digits\) is out of range"):
        load_program(tmp_path)


def test_a_zero_stride_is_refused_not_a_zero_division(tmp_path, saved):
    def edit(doc):
        doc["graph"]["nodes"][3]["op"]["strides"] = [0, 2]
    write(tmp_path, _edited(saved[0], edit), saved[1])
    with pytest.raises(IRValidationError, match=r"node 'pool' \(max_pool2d\) has strides=\(0, 2\); every entry must be a positive"):
        load_program(tmp_path)


def test_an_attribute_of_the_wrong_type_is_refused_with_its_path(tmp_path, saved):
    def edit(doc):
        doc["graph"]["nodes"][0]["op"]["kernel_size"] = None  # the op's own validator raised TypeError
    write(tmp_path, _edited(saved[0], edit), saved[1])
    with pytest.raises(IRValidationError, match=r"at graph\.nodes\.0\.op \(node 'conv'\): TypeError"):
        load_program(tmp_path)


def test_a_dimension_too_large_for_a_float_is_refused_not_an_overflow(tmp_path, saved):
    def edit(doc):
        doc["graph"]["inputs"]["x"]["shape"][1] = "@HUGE@"
    text = _edited(saved[0], edit).replace('"@HUGE@"', str(10**309))  # 'same' padding: math.ceil(size / stride)
    write(tmp_path, text, saved[1])
    with pytest.raises(IRValidationError, match=r"integer .* is out of range; program integers are at most 2\^53"):
        load_program(tmp_path)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused(tmp_path, saved, token):
    text = _edited(saved[0], lambda d: d["training"]["optimizer"].update(learning_rate="@X@"))
    write(tmp_path, text.replace('"@X@"', token), saved[1])
    with pytest.raises(IRValidationError, match=r"program file holds a bad number: .*must be finite"):
        load_program(tmp_path)


def test_a_program_file_that_is_not_utf8_is_refused(tmp_path, saved):
    write(tmp_path, saved[0].replace(b'"fuzz_cnn"', b'"fuzz\xff\xfe"'), saved[1])  # read_text: UnicodeDecodeError
    with pytest.raises(IRValidationError, match=r"program file is not UTF-8 text"):
        load_program(tmp_path)


def test_a_batch_dimension_that_is_not_an_integer_or_none_is_refused(tmp_path, saved):
    def edit(doc):
        doc["graph"]["inputs"]["x"]["shape"][2] = None  # feature_shape did int(None): TypeError
    write(tmp_path, _edited(saved[0], edit), saved[1])
    with pytest.raises(IRValidationError, match=r"graph input 'x' has shape \(6, None, 2\); every dimension must be"):
        load_program(tmp_path)


# -- fuzzing ------------------------------------------------------------------------------------

def _check(summary: dict, count: int) -> None:
    assert summary["count"] == count
    assert summary["bad"] == [], summary["bad"]
    assert set(summary["errors"]) == {"IRValidationError"}, summary
    # not vacuous: some mutations keep the file valid, most break it
    assert 0 < summary["ok"] < count // 2, summary


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_weights_give_only_validation_errors(data):
    from bridge.ir.npz import read_weights

    try:
        read_weights(io.BytesIO(data))
    except IRValidationError as exc:
        assert str(exc)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=20), st.integers(0, 10**6))
def test_any_json_value_anywhere_in_a_program_gives_only_validation_errors(saved_once, value, where):
    doc = json.loads(saved_once)
    slots: list = []
    stack = [doc]
    while stack:
        v = stack.pop()
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, child in items:
            slots.append((v, k))
            stack.append(child)
    container, key = slots[where % len(slots)]
    container[key] = value
    try:
        validate_program(program_from_json(json.dumps(doc)))
    except IRValidationError as exc:  # any other type fails the test
        assert str(exc)


def test_mutated_program_json_short_deterministic_slice(saved):
    _check(run_guarded("program_json", count=200, seed=0, structure=saved[0], weights=saved[1]), 200)


def test_mutated_weights_npz_short_deterministic_slice(saved):
    _check(run_guarded("weights_npz", count=200, seed=0, structure=saved[0], weights=saved[1]), 200)


@pytest.mark.slow
def test_mutated_program_json_10000(saved):
    _check(run_guarded("program_json", count=10_000, seed=6, structure=saved[0], weights=saved[1]), 10_000)


@pytest.mark.slow
def test_mutated_weights_npz_10000(saved):
    _check(run_guarded("weights_npz", count=10_000, seed=6, structure=saved[0], weights=saved[1]), 10_000)
