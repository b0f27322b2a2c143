"""Seeded mutators and fuzz drivers for the loaders and the wire decoder.

The drivers run in a child process (``run_guarded``) under an address-space
limit a little above what the child already uses, so a loader that believes a
header's size claim and allocates before reading fails with ``MemoryError``, an
outcome no target may produce.  Each driver returns a JSON summary: how many
inputs were accepted, how many were refused with each documented error type, and
the first few inputs that ended any other way.
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import struct
import subprocess
import sys
import warnings
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
#: headroom above the child's own footprint; an honest decode of these inputs needs < 10 MiB
GUARD_HEADROOM = 512 * 2**20


# -- a real saved program ----------------------------------------------------------------------

def fuzz_program():
    """A small CNN touching every attribute kind the loaders check: windows, strides, reshape,
    batch norm, an add, a training spec; saved and read back with ``bridge.ir.io``."""
    from bridge.ir import (Graph, Loss, Node, ParamSpec, Placement, PrivacyMode, Program, SGDSpec, TensorSpec,
                           TrainingSpec)
    from bridge.ir import ops as irops

    rng = np.random.default_rng(0)
    params = {
        "conv/kernel": (3, 3, 2, 3), "conv/bias": (3,),
        "bn/gamma": (3,), "bn/beta": (3,), "bn/moving_mean": (3,), "bn/moving_variance": (3,),
        "fc/kernel": (27, 4), "fc/bias": (4,),
    }
    weights = {n: rng.normal(size=s).astype(np.float32) for n, s in params.items()}
    weights["bn/moving_variance"] = np.abs(weights["bn/moving_variance"]) + 0.5
    bn = {r: f"bn/{r}" for r in ("gamma", "beta", "moving_mean", "moving_variance")}
    nodes = (
        Node(name="conv", op=irops.Conv2D(filters=3, kernel_size=(3, 3), strides=(1, 1), padding="same"),
             inputs=("x",), output="c", params={"kernel": "conv/kernel", "bias": "conv/bias"}),
        Node(name="bn", op=irops.BatchNorm(epsilon=1e-3), inputs=("c",), output="b", params=bn),
        Node(name="act", op=irops.Relu(), inputs=("b",), output="r"),
        Node(name="pool", op=irops.MaxPool2D(pool_size=(2, 2), strides=(2, 2)), inputs=("r",), output="p"),
        Node(name="avg", op=irops.AvgPool2D(pool_size=(1, 1), strides=(1, 1), padding="same"),
             inputs=("p",), output="q"),
        Node(name="reshape", op=irops.Reshape(target_shape=(9, -1)), inputs=("q",), output="s"),
        Node(name="flat", op=irops.Flatten(), inputs=("s",), output="f"),
        Node(name="fc", op=irops.Dense(units=4), inputs=("f",), output="h",
             params={"kernel": "fc/kernel", "bias": "fc/bias"}),
        Node(name="skip", op=irops.Identity(), inputs=("h",), output="k"),
        Node(name="sum", op=irops.Add(), inputs=("h", "k"), output="z"),
        Node(name="soft", op=irops.Softmax(), inputs=("z",), output="y"),
    )
    graph = Graph(
        inputs={"x": TensorSpec(shape=(None, 6, 6, 2))},
        outputs={"y": TensorSpec(shape=(None, 4))},
        parameters={n: ParamSpec(shape=s) for n, s in params.items()},
        nodes=nodes,
    )
    training = TrainingSpec(loss=Loss.CATEGORICAL_CROSSENTROPY, optimizer=SGDSpec(learning_rate=0.1), epochs=2)
    program = Program(name="fuzz_cnn", graph=graph, placement=Placement.default(["x"], ["y"]),
                      privacy=PrivacyMode.ENCRYPTED_TRAINING, training=training)
    return program, weights


def saved_files(directory: Path) -> tuple[bytes, bytes]:
    """(program.json, weights.npz) bytes of ``fuzz_program`` saved with ``save_program``."""
    from bridge.ir import load_program, save_program
    from bridge.ir.io import STRUCTURE_FILE, WEIGHTS_FILE

    save_program(directory, *fuzz_program())
    load_program(directory)  # the unmutated files load
    return (directory / STRUCTURE_FILE).read_bytes(), (directory / WEIGHTS_FILE).read_bytes()


# -- program.json mutations ---------------------------------------------------------------------

_BIG_DIGITS = "BIGDIGITS"
_TOKENS = {  # placed as strings, then substituted in the text (json.dumps cannot write these)
    "@DEEP@": "[" * 5000 + "]" * 5000,
    "@DEEPDICT@": '{"a":' * 3000 + "1" + "}" * 3000,
    "@BIG@": "9" * 5000,
    "@NEGBIG@": "-" + "7" * 4400,
    "@HUGE@": "123456789012345678901234567890",
    "@NAN@": "NaN",
    "@INF@": "Infinity",
    "@NEGINF@": "-Infinity",
    "@E400@": "1e400",
}
_VALUES: list[Any] = [
    0, -1, 1, 2, 3, -2**31, 2**31, 2**31 - 1, 2**53 + 1, 2**63, 10**20, True, False, None, "", "x", "relu",
    "none", "dense", 1.5, -0.0, 1e-300, 1e308, [], {}, [0, 0], [0, 1], [1, -1], [-1, -1], [2**40, 1],
    [None, 3], [[1]], [1, 2, 3], {"kind": "relu"}, {"kind": "dense", "units": 0}, {"kind": "max_pool2d",
    "pool_size": 2, "strides": 0}, {"kind": "reshape", "target_shape": [-2, -3]}, *list(_TOKENS),
]


def _slots(value: Any, out: list) -> None:
    """Every (container, key) in a parsed JSON document, iteratively."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k in list(v):
                out.append((v, k))
                stack.append(v[k])
        elif isinstance(v, list):
            for i in range(len(v)):
                out.append((v, i))
                stack.append(v[i])


def mutate_json(text: str, rng: random.Random) -> str:
    """One to three structural or textual mutations of a program.json."""
    if rng.random() < 0.7:
        doc = json.loads(text)
        for _ in range(rng.randint(1, 3)):
            slots: list = []
            _slots(doc, slots)
            container, key = rng.choice(slots)
            action = rng.random()
            if action < 0.6:
                container[key] = rng.choice(_VALUES)
            elif action < 0.7 and isinstance(container[key], (int, float)) and not isinstance(container[key], bool):
                container[key] = rng.choice([0, -1, -container[key], container[key] * 2**rng.randint(8, 70)])
            elif action < 0.8:
                if isinstance(container, dict):
                    del container[key]
                else:
                    container.pop(key)
            elif action < 0.9 and isinstance(container, list):
                container.insert(key, container[key])  # duplicate an entry (node, dim, party)
            elif isinstance(container, dict):
                container[rng.choice(["extra", "kind", "strides", "shape", "roles"])] = rng.choice(_VALUES)
        out = json.dumps(doc)
        for token, replacement in _TOKENS.items():
            out = out.replace(json.dumps(token), replacement)
        return out
    data = bytearray(text.encode())
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(data))
        action = rng.random()
        if action < 0.3:
            data[pos] = rng.randrange(256)
        elif action < 0.5:
            del data[pos:pos + rng.randint(1, 40)]
        elif action < 0.7:
            data[pos:pos] = rng.choice([b"[" * 3000, b"9" * 4400, b"-", b"0", b"e999", b"{", b"}", b",", b'"', b"\\u0000",
                                        b"\xff\xfe", b"null", b"NaN", b"[]"])
        elif action < 0.8:
            del data[pos:]
        else:
            digit = data.find(b"1", pos)
            if digit >= 0:
                data[digit:digit + 1] = rng.choice([b"0", b"-1", b"4294967296", b"1e30", b"99999999999999999999"])
    return bytes(data).decode("utf-8", "surrogateescape") if rng.random() < 0.5 else bytes(data)  # type: ignore[return-value]


# -- weights.npz mutations ----------------------------------------------------------------------

_SHAPES = ["()", "(0,)", "(-1,)", "(2**34, 2)", "(17179869184, 2)", "(4294967296, 4294967296)", "(1, 0, 2**40)",
           "(3,)", "(27, 4)", "(4, 27)", "(1,)*40", "(9223372036854775807,)", "('a',)", "[3]", "None",
           "(3.0,)", "(True,)"]
_DESCRS = ["'|O'", "'<f4'", "'>f8'", "'<i8'", "'<c16'", "'<U0'", "'|V8'", "'|b1'", "'<M8[s]'", "[('a', '<f4')]",
           "'(2,)<f4'", "'<U4'", "'<f16'", "'|S3'", "5", "'xyz'", "None"]


def _npy(header: str, data: bytes, version: int = 1, pad: bool = True) -> bytes:
    text = header + (" " * (63 - len(header) % 64) + "\n" if pad else "")
    raw = text.encode("latin1", "replace")
    length = struct.pack("<H", len(raw)) if version == 1 else struct.pack("<I", len(raw))
    return b"\x93NUMPY" + bytes([version, 0]) + length + raw


def _split_npy(member: bytes) -> tuple[str, bytes]:
    if len(member) < 10:  # cut short by an earlier mutation step
        return "", member
    length = struct.unpack_from("<H", member, 8)[0]
    return member[10:10 + length].decode("latin1"), member[10 + length:]


def mutate_npz(data: bytes, rng: random.Random) -> bytes:
    """A member-level rewrite (valid zip, crafted .npy inside) or raw byte damage of the archive."""
    if rng.random() < 0.6:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = [(i.filename, z.read(i)) for i in z.infolist()]
        for _ in range(rng.randint(1, 2)):
            index = rng.randrange(len(members))
            name, body = members[index]
            header, payload = _split_npy(body)
            action = rng.random()
            if "'descr': " not in header or ", 'fortran" not in header:
                action = 0.6  # already damaged by an earlier step: damage it more
            if action < 0.3:
                header = f"{{'descr': {eval_safe_descr(header)}, 'fortran_order': False, 'shape': {rng.choice(_SHAPES)}, }}"
                body = _npy(header, payload, version=rng.choice([1, 2]))
            elif action < 0.5:
                header = header.replace(header[header.index("'descr'"):header.index(", 'fortran")],
                                        f"'descr': {rng.choice(_DESCRS)}")
                body = _npy(header, payload)
            elif action < 0.55:
                body = _npy(header.replace("False", rng.choice(["True", "1", "None"])), payload)
            elif action < 0.65:
                cut = rng.randrange(len(body) + 1)
                body = body[:cut] if rng.random() < 0.5 else body + os.urandom(rng.randint(1, 64))
            elif action < 0.75:
                body = bytearray(body)
                for _ in range(rng.randint(1, 6) if body else 0):
                    body[rng.randrange(min(len(body), 128))] = rng.randrange(256)
                body = bytes(body)
            elif action < 0.8:
                big = rng.choice([70000, 2**31, 2**32 - 1])
                body = b"\x93NUMPY\x02\x00" + struct.pack("<I", big) + body[10:]
            elif action < 0.85:
                members.pop(index)
                continue
            elif action < 0.9:
                name = rng.choice(["w99.npy", "__names__.npy", "w0.npy", "evil.npy", "../x.npy", "w0"])
            elif action < 0.95:
                members.append((name, body))
            else:
                body = _npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", b"\x80\x04K\x01.")
            if index < len(members):
                members[index] = (name, body)
        out = io.BytesIO()
        method = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names are the point
            with zipfile.ZipFile(out, "w", method) as z:
                for name, body in members:
                    z.writestr(name, body)
        return out.getvalue()
    raw = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        action = rng.random()
        if action < 0.4:
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        elif action < 0.6:
            # the central directory and end record sit in the last few hundred bytes
            pos = len(raw) - rng.randint(1, min(len(raw), 600))
            raw[pos:pos + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x00\x00\x80",
                                           struct.pack("<I", rng.randrange(2**32))])
        elif action < 0.8:
            del raw[rng.randrange(len(raw)):]
        else:
            pos = rng.randrange(len(raw))
            raw[pos:pos] = os.urandom(rng.randint(1, 64))
        if not raw:
            break
    return bytes(raw)


def eval_safe_descr(header: str) -> str:
    start = header.index("'descr': ") + len("'descr': ")
    return header[start:header.index(",", start)]


# -- wire frames --------------------------------------------------------------------------------

_DIMS = [0, 1, 2, 3, 7, 8, 255, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**40, 2**62 + 1, 2**63, 2**64 - 1]


def random_frame(rng: random.Random) -> bytes:
    """A valid frame, a valid frame damaged, a header with chosen dims, or noise."""
    from bridge.mpc import wire

    action = rng.random()
    if action < 0.35:
        ndim = rng.randint(0, 4)
        shape = tuple(rng.randint(0, 5) for _ in range(ndim))
        bits = rng.choice([1, 8, 16, 32, 64])
        values = np.array([rng.randrange(-2**63, 2**63) for _ in range(int(np.prod(shape)))], dtype=np.int64)
        frame = wire.encode_frame(values.reshape(shape) & (1 if bits == 1 else -1), bits) if rng.random() < 0.8 \
            else wire.encode_bytes(os.urandom(rng.randint(0, 40)))
        if rng.random() < 0.3:
            return frame
        raw = bytearray(frame)
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.5 and raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            elif op < 0.75:
                del raw[rng.randrange(len(raw) + 1):]
            else:
                raw += os.urandom(rng.randint(1, 16))
        return bytes(raw)
    if action < 0.85:
        kind = rng.choice([0, 1, 2, 3, 4, 5, 5, 6, 255])
        ndim = rng.choice([0, 1, 2, 3, 4, 16, 17, 255])
        shape = [rng.choice(_DIMS) for _ in range(min(ndim, 20))]
        head = b"PB1" + struct.pack("<BB", kind, ndim) + b"".join(struct.pack("<Q", d) for d in shape)
        return head + os.urandom(rng.choice([0, 0, 1, 7, 8, 16, 24, 64]))
    return (b"PB1" if rng.random() < 0.5 else b"") + os.urandom(rng.randint(0, 64))


# -- drivers ------------------------------------------------------------------------------------

def _outcomes(inputs: Callable[[random.Random], Any], target: Callable[[Any], Any], allowed: tuple[type, ...],
              count: int, seed: int) -> dict:
    rng = random.Random(seed)
    errors: Counter = Counter()
    bad: list[str] = []
    ok = 0
    for i in range(count):
        data = inputs(rng)
        try:
            target(data)
            ok += 1
        except allowed as exc:
            errors[type(exc).__name__] += 1
            if not str(exc).strip():
                bad.append(f"input {i}: {type(exc).__name__} with an empty message")
        except BaseException as exc:  # noqa: BLE001 - every other outcome is the finding
            errors[type(exc).__name__] += 1
            if len(bad) < 5:
                sample = data if isinstance(data, bytes) else str(data).encode("utf-8", "replace")
                bad.append(f"input {i}: {type(exc).__name__}: {str(exc)[:200]} <- {sample[:120]!r}")
    return {"count": count, "ok": ok, "errors": dict(errors), "bad": bad}


def fuzz_program_json(count: int, seed: int, structure: bytes, weights: bytes) -> dict:
    from bridge.ir import IRValidationError
    from bridge.ir.io import program_from_parts

    text = structure.decode()
    return _outcomes(lambda rng: mutate_json(text, rng),
                     lambda data: program_from_parts(data, io.BytesIO(weights)), (IRValidationError,), count, seed)


def fuzz_weights_npz(count: int, seed: int, structure: bytes, weights: bytes) -> dict:
    from bridge.ir import IRValidationError
    from bridge.ir.io import program_from_parts

    return _outcomes(lambda rng: mutate_npz(weights, rng),
                     lambda data: program_from_parts(structure, io.BytesIO(data)), (IRValidationError,), count, seed)


def fuzz_wire(count: int, seed: int) -> dict:
    from bridge.mpc import wire
    from bridge.mpc.comm import CommStats, InMemoryNetwork, Messenger, PeerError

    network = InMemoryNetwork(["sender", "receiver"], timeout_s=1.0)
    outbox = network.transport("sender")
    inbox = Messenger(network.transport("receiver"), CommStats())

    seen: Counter = Counter()

    def decode(frame: bytes) -> None:
        results = []
        for decoder in (wire.decode_frame, wire.decode_bytes):
            try:
                results.append(decoder(frame))
                seen[f"{decoder.__name__} accepted"] += 1
            except wire.WireError:
                seen[f"{decoder.__name__} refused"] += 1
        for value in results:  # never more than the frame's own bits, widened to int64
            size = value.nbytes if isinstance(value, np.ndarray) else len(value)
            assert size <= 64 * len(frame), (size, len(frame))
        for receive in (inbox.recv, inbox.recv_bytes):
            outbox.send("receiver", frame)
            try:
                receive("sender")
            except PeerError as exc:
                if "'sender'" not in str(exc):
                    raise AssertionError(f"PeerError does not name the sender: {exc}") from exc

    return {**_outcomes(random_frame, decode, (), count, seed), "decoded": dict(seen)}


TARGETS = {"program_json": fuzz_program_json, "weights_npz": fuzz_weights_npz, "wire": fuzz_wire}


def _guard() -> None:
    """Cap the address space a little above what this process already maps."""
    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = vm + GUARD_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _child() -> None:
    request = json.loads(sys.stdin.read())
    args = request["args"]
    for key in ("structure", "weights"):
        if key in args:
            args[key] = bytes.fromhex(args[key])
    import bridge.ir.io  # noqa: F401 - import everything before the guard is set
    import bridge.mpc.comm  # noqa: F401

    _guard()
    print(json.dumps(TARGETS[request["target"]](**args)))


def run_guarded(target: str, timeout: float = 600, **args: Any) -> dict:
    """Run a fuzz driver in a child process under the address-space guard; its summary."""
    for key in ("structure", "weights"):
        if key in args:
            args[key] = args[key].hex()
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.security.fuzzing import _child; _child()"],
        input=json.dumps({"target": target, "args": args}), capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"fuzz child for {target} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
