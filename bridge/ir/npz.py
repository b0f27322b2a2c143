"""Read an untrusted ``weights.npz`` without trusting a byte of it.

``np.load`` believes the shape in each ``.npy`` header and allocates the array
before it reads the data, so a 1 KiB file can ask for 128 GiB; a broken archive
surfaces as any of a dozen exception types.  This reader opens the zip itself,
bounds the member count and sizes against the archive's real size, parses each
``.npy`` header with NumPy's own header parser and checks dtype and shape against
the bytes the member actually holds *before* allocating anything.  Every problem
is an ``IRValidationError`` naming the member and what is wrong with it.
"""

from __future__ import annotations

import io
import math
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from bridge.ir.validate import IRValidationError

#: more members than this is not a weights file (a model with 32k parameter arrays)
MAX_MEMBERS = 65_536
#: ``.npy`` headers NumPy writes are < 200 bytes; NumPy itself refuses > 10,000
MAX_HEADER_BYTES = 10_000
#: DEFLATE cannot expand data by more than ~1032:1, so a larger claim is a lie
DEFLATE_MAX_RATIO = 1032
MAX_NDIM = 32
_CHUNK = 1 << 20
_NAMES = "__names__"

#: what a malformed archive can raise inside ``zipfile``, ``zlib`` and NumPy's header parser
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    SyntaxError,
    tokenize.TokenError,  # NumPy re-tokenizes headers it takes for Python 2 ones
    NotImplementedError,
    RuntimeError,
)


def read_weights(source: str | Path | BinaryIO, label: str = "weights.npz") -> dict[str, np.ndarray]:
    """The ``name -> array`` mapping ``save_program`` wrote, or an ``IRValidationError``."""
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as fp:
                return _read(fp, label)
        return _read(source, label)
    except IRValidationError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise IRValidationError(
            f"{label} is not a readable weights archive ({type(exc).__name__}: {exc}); "
            "expected the weights.npz that save_program writes. Re-export the model."
        ) from exc


def _read(fp: BinaryIO, label: str) -> dict[str, np.ndarray]:
    size = fp.seek(0, io.SEEK_END)
    fp.seek(0)
    with zipfile.ZipFile(fp) as archive:
        infos = archive.infolist()
        _check_members(infos, size, label)
        by_name = {info.filename: info for info in infos}
        if f"{_NAMES}.npy" not in by_name:
            raise IRValidationError(f"{label} has no {_NAMES}.npy member (the parameter index); re-export the model")
        names = _read_member(archive, by_name[f"{_NAMES}.npy"], label, kinds="U")
        if names.ndim != 1:
            raise IRValidationError(f"{label}: {_NAMES} must be a 1-d list of names, received shape {names.shape}")
        expected = {f"{_NAMES}.npy", *(f"w{i}.npy" for i in range(len(names)))}
        if set(by_name) != expected:
            missing = sorted(expected - set(by_name))[:5]
            extra = sorted(set(by_name) - expected)[:5]
            raise IRValidationError(
                f"{label} lists {len(names)} parameters, but its members do not match: missing {missing}, "
                f"unexpected {extra}; re-export the model"
            )
        keys = [str(n) for n in names]
        if len(set(keys)) != len(keys):
            raise IRValidationError(f"{label} names a parameter twice; parameter names must be unique")
        return {key: _read_member(archive, by_name[f"w{i}.npy"], label, kinds="fiu") for i, key in enumerate(keys)}


def _check_members(infos: Iterable[zipfile.ZipInfo], size: int, label: str) -> None:
    """Bound count and sizes by the archive's real size, before reading any member."""
    infos = list(infos)
    if len(infos) > MAX_MEMBERS:
        raise IRValidationError(f"{label} has {len(infos)} members; a weights archive has at most {MAX_MEMBERS}")
    seen: set[str] = set()
    stored = 0
    for info in infos:
        where = f"{label} member {info.filename!r}"
        if info.filename in seen:
            raise IRValidationError(f"{where} appears twice; the archive is corrupt or crafted")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise IRValidationError(f"{where} is encrypted; weights archives are never encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise IRValidationError(
                    f"{where} is stored uncompressed but claims {info.file_size} bytes in {info.compress_size}"
                )
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > DEFLATE_MAX_RATIO * info.compress_size + 1024:
                raise IRValidationError(
                    f"{where} claims to inflate {info.compress_size} bytes to {info.file_size}, more than "
                    "DEFLATE can; the archive is corrupt or crafted"
                )
        else:
            raise IRValidationError(
                f"{where} uses compression method {info.compress_type}; weights archives are stored or deflated"
            )
        if info.header_offset < 0 or info.header_offset + info.compress_size > size:
            raise IRValidationError(f"{where} claims data beyond the end of the {size}-byte archive")
        stored += info.compress_size
    if stored > size:
        raise IRValidationError(
            f"{label}'s members claim {stored} bytes in a {size}-byte archive (overlapping members); "
            "the archive is corrupt or crafted"
        )


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, kinds: str) -> np.ndarray:
    """One ``.npy`` member: header checked against the member's real size, then read in chunks."""
    where = f"{label} member {info.filename!r}"
    try:
        return _read_npy(archive, info, where, kinds)
    except IRValidationError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise IRValidationError(f"{where} is not a valid .npy array ({type(exc).__name__}: {exc})") from exc


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, kinds: str) -> np.ndarray:
    with archive.open(info) as member:
        shape, fortran, dtype, offset = _read_header(member, where)
        if dtype.hasobject or dtype.kind not in kinds or dtype.fields is not None or dtype.subdtype is not None:
            raise IRValidationError(
                f"{where} has dtype {dtype.str!r}; expected {_describe(kinds)} (objects are never unpickled)"
            )
        if dtype.itemsize == 0:
            raise IRValidationError(f"{where} has a zero-size dtype {dtype.str!r}")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if offset + nbytes != info.file_size:
            raise IRValidationError(
                f"{where}: its header promises shape {shape} of {dtype.str} ({nbytes} bytes), the member holds "
                f"{info.file_size - offset} bytes of data; the file is truncated or crafted"
            )
        flat = np.empty(count, dtype=dtype)
        buffer = memoryview(flat).cast("B") if nbytes else memoryview(b"")
        filled = 0
        while filled < nbytes:
            chunk = member.read(min(_CHUNK, nbytes - filled))
            if not chunk:
                raise IRValidationError(f"{where} ends after {filled} of {nbytes} data bytes; the file is truncated")
            buffer[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        if member.read(1):  # also makes zipfile check the member's CRC
            raise IRValidationError(f"{where} holds more data than its header describes")
    array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _read_header(member: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset of a ``.npy`` stream, reading only its header."""
    prefix = _read_exact(member, npy_format.MAGIC_LEN, where, "magic")
    major, minor = npy_format.read_magic(io.BytesIO(prefix))
    if (major, minor) == (1, 0):
        length_format = "<H"
    elif (major, minor) == (2, 0):
        length_format = "<I"
    else:
        raise IRValidationError(f"{where} is .npy format {major}.{minor}; expected 1.0 or 2.0")
    length_bytes = _read_exact(member, struct.calcsize(length_format), where, "header length")
    (length,) = struct.unpack(length_format, length_bytes)
    if length > MAX_HEADER_BYTES:
        raise IRValidationError(f"{where} has a {length}-byte .npy header; at most {MAX_HEADER_BYTES} is accepted")
    header = io.BytesIO(length_bytes + _read_exact(member, length, where, "header"))
    reader = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
    shape, fortran, dtype = reader(header, max_header_size=MAX_HEADER_BYTES)
    if len(shape) > MAX_NDIM or any(d < 0 for d in shape):
        raise IRValidationError(f"{where} has an invalid shape {shape}")
    return tuple(shape), bool(fortran), dtype, len(prefix) + len(length_bytes) + length


def _read_exact(member: BinaryIO, n: int, where: str, what: str) -> bytes:
    data = member.read(n)
    while len(data) < n:
        more = member.read(n - len(data))
        if not more:
            raise IRValidationError(f"{where} ends inside its .npy {what}; the file is truncated")
        data += more
    return data


def _describe(kinds: str) -> str:
    return {"U": "a unicode string array", "fiu": "a real numeric array (float, int or uint)"}[kinds]
