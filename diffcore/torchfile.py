"""Check what a torch file (``torch.save``'s zip or legacy format) claims before ``torch.load`` allocates it.

``torch.load`` allocates each storage at the size the file's records claim. A small forged file can claim an
enormous one: a zip entry compressed with DEFLATE unpacks to gigabytes (1 MB of zeros is a 1 GiB tensor, which
``torch.load`` decompresses into memory), and the legacy format allocates the size its pickle states before reading
the bytes. :func:`check_torch_file` reads only the zip directory and the pickle (with an unpickler that builds no
class and calls nothing) and refuses, naming the file:

- a zip entry that is compressed (``torch.save`` stores every entry uncompressed), that claims more bytes than
  the file holds, or entries that overlap (their sizes add up to more than the file);
- a storage whose claimed size (elements · element size) differs from its record's (zip) or exceeds what is left
  in the file (legacy);
- a pickle larger than :data:`MAX_PICKLE_BYTES`.

A file that is not a torch file at all is left to ``torch.load``, whose error the callers already report.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["TorchFileError", "check_torch_file", "MAX_PICKLE_BYTES"]

#: Largest pickle (``data.pkl``, or the legacy format's object pickle) read to find the storages' claims.
MAX_PICKLE_BYTES = 64 << 20

#: Bytes per element of the storage classes a pickle names (unknown names count 1 byte per element).
_ELEMENT_BYTES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8, "QInt8Storage": 1, "QUInt8Storage": 1,
    "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1, "UntypedStorage": 1,
}


class TorchFileError(ValueError):
    """A torch file whose records claim more than it holds; the message names the file and the record."""


class _Stub:
    """What the claim-reading unpickler builds for every global: accepts any call, state or item, does nothing."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> "_Stub":
        return _Stub(self.name)

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _ClaimReader(pickle.Unpickler):
    """Unpickles without importing or calling anything; records each storage's ``(key, claimed bytes)``."""

    def __init__(self, f: io.BufferedIOBase) -> None:
        super().__init__(f)
        self.claims: list[tuple[str, int]] = []

    def find_class(self, module: str, name: str) -> Any:
        return _Stub(name)

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            kind = pid[1].name if isinstance(pid[1], _Stub) else ""
            numel = pid[4]
            if isinstance(numel, int) and not isinstance(numel, bool):
                self.claims.append((str(pid[2]), numel * _ELEMENT_BYTES.get(kind, 1)))
        return _Stub("storage")


def _claims(data: bytes | io.BufferedIOBase) -> list[tuple[str, int]]:
    reader = _ClaimReader(io.BytesIO(data) if isinstance(data, bytes) else data)
    reader.load()
    return reader.claims


def check_torch_file(path: str | os.PathLike) -> None:
    """Raise :class:`TorchFileError` when the torch file at ``path`` claims more than it holds (module docstring).
    Reads the zip directory and the pickle only; nothing the file claims is allocated."""
    path = Path(path)
    size = path.stat().st_size
    if zipfile.is_zipfile(path):
        _check_zip(path, size)
    else:
        _check_legacy(path, size)


def _check_zip(path: Path, size: int) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED:
                    raise TorchFileError(
                        f"{path}: record {info.filename!r} is compressed and would unpack to {info.file_size} bytes "
                        f"from a {size}-byte file (torch.save stores records uncompressed): refused as a forged or "
                        "foreign file")
                if info.file_size != info.compress_size or info.header_offset + info.file_size > size:
                    raise TorchFileError(f"{path}: record {info.filename!r} claims {info.file_size} bytes, more "
                                         f"than the {size}-byte file holds (a forged or truncated file)")
            total = sum(i.file_size for i in infos)
            if total > size:
                raise TorchFileError(f"{path}: its records claim {total} bytes in all, more than the {size}-byte "
                                     "file holds (overlapping records: a forged file)")
            pickles = [i for i in infos if i.filename.endswith("data.pkl")]
            if len(pickles) != 1:
                return  # not a torch.save zip: torch.load says what it is
            pkl = pickles[0]
            if pkl.file_size > MAX_PICKLE_BYTES:
                raise TorchFileError(f"{path}: its pickle is {pkl.file_size} bytes, more than the "
                                     f"{MAX_PICKLE_BYTES >> 20} MiB a checkpoint or mel needs")
            prefix = pkl.filename[: -len("data.pkl")]
            records = {i.filename: i.file_size for i in infos}
            try:
                claims = _claims(z.read(pkl))
            except Exception:
                return  # an unreadable pickle: torch.load's own error names the problem
    except zipfile.BadZipFile:
        return
    for key, nbytes in claims:
        have = records.get(f"{prefix}data/{key}")
        if have is not None and nbytes > have:
            raise TorchFileError(f"{path}: storage {key!r} claims {nbytes} bytes, but its record holds {have} "
                                 "(a forged or damaged file)")


def _check_legacy(path: Path, size: int) -> None:
    with open(path, "rb") as f:
        try:  # magic number, protocol version, system info (read by the same stub unpickler), the object's pickle
            for _ in range(3):
                _claims(f)  # type: ignore[arg-type]
            start = f.tell()
            claims = _claims(f)  # type: ignore[arg-type]
        except Exception:
            return  # not the legacy format: torch.load says what it is
        if f.tell() - start > MAX_PICKLE_BYTES:
            raise TorchFileError(f"{path}: its pickle is more than the {MAX_PICKLE_BYTES >> 20} MiB a checkpoint "
                                 "or mel needs")
        left = size - f.tell()
    total = sum(n for _, n in claims)
    if total > left:
        key, nbytes = max(claims, key=lambda c: c[1])
        raise TorchFileError(f"{path}: its storages claim {total} bytes (storage {key!r}: {nbytes}), but only {left} "
                             "bytes follow its pickle (a forged or damaged file)")
