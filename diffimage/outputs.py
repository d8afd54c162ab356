"""The output folder of ``diffimage sample``: what may be replaced, and writing it so that a signal loses nothing.

- :func:`check_sample_folder`, before any work: a folder holding a ``grid.png``, ``sample_*.png`` or
  ``manifest.json`` that an earlier ``diffimage sample`` did not write (no manifest of ours beside them) is refused,
  so another tool's files are never replaced. Other files in the folder are never touched.
- :func:`write_sample_outputs`: removes the temporary files of an earlier interrupted run and that run's outputs
  (a rerun with a smaller ``--n`` used to leave the old images beside the new manifest), then writes the grid and
  the images one atomic file at a time and the manifest last. SIGINT/SIGTERM during the writes let the file in
  flight finish, write a manifest of what is complete (``"complete": false``) and raise :class:`SampleInterrupted`;
  the command exits 130/143.
- :func:`sampling_interrupts`, around the sampling itself: SIGINT/SIGTERM before any file is written stop the
  sampling at once with :class:`SampleInterrupted` saying so; nothing has been written, the folder is as it was.
"""

from __future__ import annotations

import json
import re
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from torch import Tensor

from diffcore.atomic import write_json
from diffcore.errors import CheckpointError

__all__ = ["TOOL", "SampleInterrupted", "check_sample_folder", "sampling_interrupts", "write_sample_outputs"]

#: The ``tool`` entry of the manifests ``diffimage sample`` writes.
TOOL = "diffimage sample"
GRID, MANIFEST = "grid.png", "manifest.json"
_IMAGE_RE = re.compile(r"^sample_\d{6}\.png$")
_TEMP_RE = re.compile(r"^\.(grid\.png|manifest\.json|sample_\d{6}\.png)\..*\.tmp$")
#: What an older manifest of ours holds (those written before the ``tool`` entry).
_OLD_KEYS = {"model", "n", "seed", "sampler", "steps"}


class SampleInterrupted(Exception):
    """SIGINT/SIGTERM arrived while the outputs were written; what is complete is on disk with its manifest."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def _ours(manifest: Path) -> bool:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8")) if manifest.stat().st_size < 1 << 20 else None
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (data.get("tool") == TOOL or _OLD_KEYS <= set(data))


def _our_files(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.name in (GRID, MANIFEST) or _IMAGE_RE.match(p.name))


def check_sample_folder(out: str | Path) -> None:
    """Refuse (``CheckpointError``) an output folder holding ``grid.png``/``sample_*.png``/``manifest.json`` that
    no manifest of ours accounts for: they belong to another tool, and would be replaced."""
    out = Path(out)
    if not out.is_dir():
        return
    files = _our_files(out)
    if not files:
        return
    manifest = out / MANIFEST
    if manifest.exists() and _ours(manifest):
        return
    names = ", ".join(p.name for p in files[:3]) + (", ..." if len(files) > 3 else "")
    why = "its manifest.json is not one diffimage sample wrote" if manifest.exists() else \
        "there is no manifest.json of diffimage sample beside them"
    raise CheckpointError(f"{out}: already holds {names}, and {why}; they are not replaced: give another --out "
                          "folder (or remove them)")


@contextmanager
def sampling_interrupts(out: str | Path, n: int, done: Callable[[], int]) -> Iterator[None]:
    """While the body runs (the sampling, before any output exists), SIGINT and SIGTERM raise
    :class:`SampleInterrupted` (exit status 128 + the signal) saying that ``done()`` of ``n`` images were sampled and
    nothing was written; the previous handlers are restored afterwards. Outside the main thread, nothing changes."""
    out = Path(out)

    def stop(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        raise SampleInterrupted(signum, f"{out}: interrupted by {name} while sampling ({done()} of {n} images "
                                        "sampled): nothing was written")

    handlers: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)


def write_sample_outputs(images: Tensor, out: str | Path, fmt: str, manifest: Mapping[str, Any],
                         nrow: int | None = None) -> list[str]:
    """Write ``images`` into ``out`` as ``fmt`` (``grid``, ``images`` or ``both``) and ``manifest.json`` (with
    ``tool``, ``complete``, ``grid`` and ``images_written``); returns what was written, in words. Call
    :func:`check_sample_folder` first. Raises :class:`SampleInterrupted` after SIGINT/SIGTERM (see the module)."""
    from diffimage.grid import save_grid, save_png, to_uint8

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():  # an interrupted earlier run's temporary files, then its outputs
        if _TEMP_RE.match(p.name):
            p.unlink(missing_ok=True)
    for p in _our_files(out):
        if p.name != MANIFEST:
            p.unlink(missing_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)

    caught: list[int] = []
    handlers: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    written: list[str] = []
    grid_done, count = False, 0
    try:
        if fmt in ("grid", "both"):
            save_grid(images, out / GRID, nrow=nrow)
            grid_done = True
            written.append(str(out / GRID))
        if fmt in ("images", "both") and not caught:
            x = to_uint8(images)
            for i in range(x.shape[0]):
                save_png(x[i], out / f"sample_{i:06d}.png")
                count += 1
                if caught:
                    break
            written.append(f"{out / 'sample_*.png'} ({count} files)")
    finally:
        complete = not caught and (fmt == "grid" or count == images.shape[0])
        write_json(out / MANIFEST, {"tool": TOOL, **dict(manifest), "complete": complete,
                                    "grid": GRID if grid_done else None, "images_written": count})
        for sig, old in handlers.items():
            signal.signal(sig, old)
    if caught:
        name = signal.Signals(caught[0]).name
        parts = ([GRID] if grid_done else []) + ([f"{count} of {images.shape[0]} images"] if fmt != "grid" else [])
        raise SampleInterrupted(caught[0], f"{out}: interrupted by {name}: wrote {', '.join(parts) or 'nothing'} "
                                           f"and a manifest.json that lists them (\"complete\": false)")
    return written
