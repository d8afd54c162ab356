"""Array files read within bounds: ``.npy`` and ``.npz`` headers are checked before anything is allocated.

``np.load`` trusts a file's header: a 4 kB ``.npy`` whose header claims ``(80, 2000000)`` makes numpy allocate
the claimed size before it finds the data missing, and an ``.npz`` member claiming 10¹² images is a raw
allocation error. Here the header is read first and the claimed size is compared with what the file (or the zip
member) really holds and with the caller's bound, so a lying header is one :class:`ArrayFileError` naming the file.
Both packages read their arrays through these functions (``diffwave`` mels, ``diffimage`` image sets).
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import IO, Mapping

import numpy as np

__all__ = ["ArrayFileError", "NpyHeader", "read_npy_header", "load_npy", "npz_headers", "load_npz"]


class ArrayFileError(ValueError):
    """An array file whose header is unreadable, lies about its size, or claims more than the caller's bound."""


class NpyHeader:
    """The header of one ``.npy`` array: ``shape``, ``dtype``, ``fortran_order`` and ``nbytes`` (of the data)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, fortran_order: bool) -> None:
        self.shape, self.dtype, self.fortran_order = shape, dtype, fortran_order
        self.nbytes = math.prod(shape) * dtype.itemsize

    def __repr__(self) -> str:
        return f"NpyHeader(shape={self.shape}, dtype={self.dtype})"


def read_npy_header(f: IO[bytes], where: str) -> NpyHeader:
    """Read the magic string and header of a ``.npy`` stream (left at the first data byte)."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format._read_array_header(f, version)  # 2.0, 3.0
    except Exception as e:  # numpy raises ValueError, OSError, SyntaxError, ... for a damaged header
        raise ArrayFileError(f"{where}: cannot read it as a .npy array ({type(e).__name__}: {' '.join(str(e).split())})"
                             ) from None
    if dtype.hasobject:
        raise ArrayFileError(f"{where}: holds Python objects (pickled data), which are never loaded")
    return NpyHeader(tuple(int(s) for s in shape), dtype, bool(fortran))


def _check(header: NpyHeader, available: int, where: str, max_bytes: int | None) -> None:
    if max_bytes is not None and header.nbytes > max_bytes:
        raise ArrayFileError(f"{where}: its header claims an array of shape {list(header.shape)} ({header.nbytes:,} "
                             f"bytes), more than the limit of {max_bytes:,} bytes")
    if header.nbytes > available:
        raise ArrayFileError(f"{where}: its header claims shape {list(header.shape)} ({header.nbytes:,} bytes of "
                             f"data) but the file holds only {available:,}: truncated or forged")


def _read_data(f: IO[bytes], header: NpyHeader, rows: int | None, where: str) -> np.ndarray:
    shape = header.shape
    if rows is not None and shape and rows < shape[0] and not header.fortran_order:
        shape = (rows, *shape[1:])
    count = math.prod(shape)
    raw = f.read(count * header.dtype.itemsize)
    if len(raw) != count * header.dtype.itemsize:
        raise ArrayFileError(f"{where}: truncated ({len(raw):,} of {count * header.dtype.itemsize:,} data bytes)")
    arr = np.frombuffer(raw, dtype=header.dtype, count=count)
    arr = arr.reshape(shape[::-1]).transpose() if header.fortran_order else arr.reshape(shape)
    if rows is not None and header.fortran_order:
        arr = arr[:rows]
    return arr


def load_npy(path: str | os.PathLike, *, max_bytes: int | None = None) -> tuple[np.ndarray, NpyHeader]:
    """A ``.npy`` array (writable, native byte order) after its header was checked against the file's size and
    ``max_bytes``; :class:`ArrayFileError` naming the file otherwise."""
    where = str(path)
    with open(path, "rb") as f:
        header = read_npy_header(f, where)
        available = os.fstat(f.fileno()).st_size - f.tell()
        _check(header, available, where, max_bytes)
        arr = _read_data(f, header, None, where)
    arr = np.array(arr)  # a writable copy
    if arr.dtype.byteorder not in ("=", "|"):  # big-endian file: torch reads native byte order only
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr, header


def npz_headers(path: str | os.PathLike) -> dict[str, tuple[NpyHeader, int, int]]:
    """``{name: (header, uncompressed member size, compressed member size)}`` of the ``.npy`` members of an
    ``.npz`` (names without ``.npy``), read from the zip directory and each member's first bytes only."""
    where = str(path)
    out: dict[str, tuple[NpyHeader, int, int]] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                with z.open(info) as f:
                    header = read_npy_header(f, f"{where}: array {name!r}")
                    available = info.file_size - f.tell()
                _check(header, available, f"{where}: array {name!r}", None)
                out[name] = (header, info.file_size, info.compress_size)
    except ArrayFileError:
        raise
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as e:
        raise ArrayFileError(f"{where}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    return out


def load_npz(path: str | os.PathLike, names: Mapping[str, int | None], *, max_bytes: int) -> dict[str, np.ndarray]:
    """The arrays ``names`` of an ``.npz`` (those present), each cut to its first ``names[name]`` rows (``None``:
    all). The headers are checked first: what the archive unpacks to must not exceed ``max_bytes`` in all, and no
    member may claim more data than it holds, so nothing is allocated for a lying header or a zip bomb."""
    where = str(path)
    headers = npz_headers(path)
    total = 0
    for name, rows in names.items():
        if name in headers:
            h = headers[name][0]
            keep = h.shape[0] if rows is None or not h.shape else min(rows, h.shape[0])
            total += (h.nbytes // h.shape[0] * keep) if h.shape and h.shape[0] else h.nbytes
    if total > max_bytes:
        raise ArrayFileError(f"{where}: unpacks to {total:,} bytes, more than the limit of {max_bytes:,} bytes "
                             "(pass a smaller limit, or split the archive)")
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for name, rows in names.items():
                if name not in headers:
                    continue
                with z.open(name + ".npy") as f:
                    header = read_npy_header(f, f"{where}: array {name!r}")
                    arr = _read_data(f, header, rows, f"{where}: array {name!r}")
                arr = np.array(arr)
                if arr.dtype.byteorder not in ("=", "|"):
                    arr = arr.astype(arr.dtype.newbyteorder("="))
                out[name] = arr
    except ArrayFileError:
        raise
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as e:
        raise ArrayFileError(f"{where}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    return out

