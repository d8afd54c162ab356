"""Run logs: tensorboard scalars and media, a JSONL file a script can read, media files under ``RUN/samples``.

Only rank 0 writes: other ranks get a :class:`NullLogger` with the same methods. Every scalar goes to tensorboard
(``RUN/tb``) and to ``RUN/log.jsonl`` as one JSON object per call, ``{"step": s, "time": unix_seconds, name: value,
...}``; events (a skipped NaN step, a failed checkpoint write, a resume) are lines with an ``"event"`` key. Read it
back with :func:`read_log`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from diffcore.atomic import atomic_write

__all__ = ["RunLogger", "NullLogger", "read_log"]


def _atomic(path: Path, write: Any) -> None:
    """Media files go through the package's one atomic writer (same mode as every output, never half a file)."""
    atomic_write(path, write)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "media"


def _num(value: Any) -> float | int:
    if isinstance(value, torch.Tensor):
        value = value.detach().item()
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return float(value)


def _json_num(x: float | int) -> float | int | str:
    if isinstance(x, int):
        return x
    return x if math.isfinite(x) else str(x)  # JSON has no NaN/Inf; "nan"/"inf" strings keep the line valid


class NullLogger:
    """The logger of ranks other than 0: accepts every call and writes nothing."""

    def scalar(self, name: str, value: float, step: int) -> None: ...
    def scalars(self, values: Mapping[str, float], step: int) -> None: ...
    def event(self, kind: str, step: int, **fields: Any) -> None: ...
    def resumed_at(self, step: int, **fields: Any) -> None: ...
    def audio(self, name: str, wav: Any, sample_rate: int, step: int) -> None: ...
    def image(self, name: str, img: Any, step: int) -> None: ...
    def figure(self, name: str, fig: Any, step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class RunLogger(NullLogger):
    """Rank 0's logger for a run folder (see the module docstring).

    Methods: ``scalar(name, value, step)``, ``scalars(dict, step)``, ``event(kind, step, **fields)``,
    ``audio(name, wav_1d, sample_rate, step)`` (tensorboard + ``samples/<name>_step<step>.wav``, 16-bit PCM),
    ``image(name, img, step)`` (CHW float in [0, 1], HWC uint8 or HW; tensorboard + PNG),
    ``figure(name, matplotlib_figure, step)`` (tensorboard + PNG; the figure is closed).
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.samples_dir = self.run_dir / "samples"
        path = self.run_dir / "log.jsonl"
        self._jsonl = open(path, "a", encoding="utf-8")
        if self._jsonl.tell() > 0:  # a process killed mid-line (power cut) leaves no newline: end that line
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self._jsonl.write("\n")
                    self._jsonl.flush()
        self._use_tb = tensorboard
        self._writer = None
        self._purge_step: int | None = None

    def resumed_at(self, step: int, **fields: Any) -> None:
        """Mark a resume: tensorboard drops what an interrupted attempt logged after ``step`` (call before
        logging anything), and :func:`read_log` does the same for the JSONL records."""
        self._purge_step = int(step)
        self.event("resume", step, **fields)

    @property
    def _tb(self):
        if self._writer is None and self._use_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self._purge_step)
            except ImportError as e:  # tensorboard is optional at run time
                warnings.warn(f"tensorboard logging disabled: {e}", stacklevel=2)
                self._use_tb = False
        return self._writer

    def _write(self, record: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def scalar(self, name: str, value: float, step: int) -> None:
        self.scalars({name: value}, step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if not values:
            return
        nums = {k: _num(v) for k, v in values.items()}
        if self._tb is not None:
            for k, v in nums.items():
                self._tb.add_scalar(k, v, step)
        self._write({"step": int(step), "time": time.time(), **{k: _json_num(v) for k, v in nums.items()}})

    def event(self, kind: str, step: int, **fields: Any) -> None:
        self._write({"step": int(step), "time": time.time(), "event": kind, **fields})

    def _media_path(self, name: str, step: int, ext: str) -> Path:
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        return self.samples_dir / f"{_safe(name)}_step{int(step):08d}.{ext}"

    def audio(self, name: str, wav: Any, sample_rate: int, step: int) -> None:
        import soundfile

        x = torch.as_tensor(wav).detach().float().cpu().reshape(-1).clamp(-1.0, 1.0)
        if self._tb is not None:
            self._tb.add_audio(name, x.unsqueeze(0), step, sample_rate=int(sample_rate))
        _atomic(self._media_path(name, step, "wav"),
                lambda f: soundfile.write(f, x.numpy(), int(sample_rate), subtype="PCM_16", format="WAV"))

    def image(self, name: str, img: Any, step: int) -> None:
        from PIL import Image

        t = torch.as_tensor(img).detach().cpu()
        if t.dtype == torch.uint8:
            hwc = t if t.ndim == 3 else t.unsqueeze(-1)
            if hwc.ndim != 3 or hwc.shape[-1] not in (1, 3, 4):
                raise ValueError(f"image {name!r}: uint8 images must be HWC or HW, got shape {tuple(t.shape)}")
        else:
            chw = t.float() if t.ndim == 3 else t.float().unsqueeze(0)
            if chw.ndim != 3 or chw.shape[0] not in (1, 3, 4):
                raise ValueError(f"image {name!r}: float images must be CHW or HW in [0, 1], got {tuple(t.shape)}")
            hwc = (chw.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0)
        arr = hwc.numpy()
        if self._tb is not None:
            self._tb.add_image(name, arr, step, dataformats="HWC")
        pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        _atomic(self._media_path(name, step, "png"), lambda f: pil.save(f, format="PNG"))

    def figure(self, name: str, fig: Any, step: int) -> None:
        _atomic(self._media_path(name, step, "png"), lambda f: fig.savefig(f, format="png"))
        if self._tb is not None:
            self._tb.add_figure(name, fig, step, close=True)
        else:
            import matplotlib.pyplot as plt

            plt.close(fig)

    def flush(self) -> None:
        self._jsonl.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if not self._jsonl.closed:
            self._jsonl.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._use_tb = False


def read_log(run_dir: str | Path, event: str | None = None) -> list[dict[str, Any]]:
    """The records of ``RUN/log.jsonl``: scalar records by default, or the events of kind ``event`` (``"*"``: all
    events). A ``resume`` event at step ``s`` drops the scalar records of steps after ``s`` written before it (an
    interrupted attempt that got further than its last checkpoint), so each step appears once. Lines that are not
    JSON records (torn by a kill or a power cut) are skipped."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    scalars: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # the torn last line of a process that was killed while writing it
            continue
        if not isinstance(rec, dict) or "step" not in rec:
            continue
        kind = rec.get("event")
        if kind is None:
            scalars.append(rec)
        else:
            if kind == "resume":
                scalars = [r for r in scalars if r["step"] <= rec["step"]]
            events.append(rec)
    if event is None:
        return scalars
    return [e for e in events if event in ("*", e["event"])]
