"""Reading, validating and writing audio files.

Every way a file can be unusable (missing, unreadable, truncated, empty, silent, NaN) raises :class:`AudioError`
with a message that names the file, so that a data pipeline can report and skip it. Waveforms are float32 tensors
in [-1, 1] (integer PCM is scaled by 2^(bits-1), as soundfile does); mono is ``[T]``, multi-channel ``[C, T]``.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

__all__ = [
    "AudioError",
    "AudioInfo",
    "AUDIO_EXTENSIONS",
    "audio_info",
    "load_audio",
    "save_audio",
    "list_audio_files",
    "resampled_length",
]

log = logging.getLogger(__name__)

#: Peak amplitude below which a clip counts as silent (-80 dBFS; a 16-bit LSB is about -90 dBFS).
SILENCE_PEAK = 1e-4

#: File extensions that libsndfile (through soundfile) decodes.
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64"}
    | {".rf64"}
    | ({".mp3"} if "MP3" in sf.available_formats() else set())
)


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file and the problem."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: ``frames`` per channel, ``sample_rate`` in Hz, ``channels``."""

    path: Path
    frames: int
    sample_rate: int
    channels: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")


def _wav_truncation(path: Path) -> str | None:
    """For a RIFF/WAVE file, a description of the problem when the data chunk is shorter than its header says.

    libsndfile reads a truncated WAV silently (it returns the frames that are there), so this is checked here.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                if csize in (0, 0xFFFFFFFF):  # streaming writers leave a placeholder size
                    return None
                available = size - (pos + 8)
                if available < csize:
                    return f"truncated: the header announces {csize} bytes of samples but only {available} are present"
                return None
            pos += 8 + csize + (csize & 1)  # chunks are word-aligned
    return None


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read a file's header (cheap); raise :class:`AudioError` if it is missing, unreadable, truncated or empty."""
    path = Path(path)
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: unreadable or corrupt audio file ({e})") from None
    problem = _wav_truncation(path)
    if problem:
        raise AudioError(f"{path}: {problem}")
    if info.frames <= 0:
        raise AudioError(f"{path}: zero-length audio (no samples)")
    return AudioInfo(path=path, frames=int(info.frames), sample_rate=int(info.samplerate), channels=int(info.channels))


def resampled_length(num_samples: int, orig_sr: int, new_sr: int) -> int:
    """Length of ``torchaudio.functional.resample``'s output for an input of ``num_samples`` samples."""
    if orig_sr == new_sr:
        return num_samples
    g = np.gcd(int(orig_sr), int(new_sr))
    orig, new = orig_sr // g, new_sr // g
    return -(-new * num_samples // orig)  # ceil(new * T / orig)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    *,
    strict: bool = False,
    mono: bool = True,
    silence_peak: float = SILENCE_PEAK,
    log_resample: bool = True,
) -> tuple[torch.Tensor, int]:
    """Read an audio file as float32 in [-1, 1].

    Args:
        path: a WAV/FLAC/OGG/... file (8/16/24/32-bit integer PCM or float).
        sample_rate: the rate the caller needs; a file at another rate is resampled (band-limited sinc,
            ``torchaudio.functional.resample``) with a logged warning, or rejected when ``strict``.
        mono: average the channels (``[T]``); otherwise return ``[C, T]``.
        silence_peak: a clip whose peak |x| is below this is rejected as silent.
        log_resample: log the resampling warning (a dataset that reports it once for all files turns it off).

    Returns:
        ``(wav, sr)``: ``wav`` is ``[T]`` (or ``[C, T]``) float32, ``sr`` the rate of ``wav``.

    Raises:
        AudioError: missing, empty, unreadable, corrupt or truncated file; no samples; non-finite samples; silence;
            a different sample rate in strict mode.
    """
    path = Path(path)
    _check_exists(path)
    problem = _wav_truncation(path)
    if problem:
        raise AudioError(f"{path}: {problem}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: unreadable or corrupt audio file ({e})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: zero-length audio (no samples)")
    bad = ~np.isfinite(data)
    if bad.any():
        raise AudioError(f"{path}: {int(bad.sum())} non-finite samples (NaN or Inf)")
    wav = torch.from_numpy(np.ascontiguousarray(data.T))  # [C, T]
    if mono:
        wav = wav.mean(dim=0)
    peak = float(wav.abs().max())
    if peak < silence_peak:
        raise AudioError(f"{path}: silent (peak |x| = {peak:.3g} is below {silence_peak:g})")
    if sample_rate is not None and sr != sample_rate:
        if strict:
            raise AudioError(f"{path}: sample rate is {sr} Hz but {sample_rate} Hz is required (strict mode)")
        if log_resample:
            log.warning("resampling %s from %d Hz to %d Hz", path, sr, sample_rate)
        wav = AF.resample(wav, sr, sample_rate)
        sr = sample_rate
    return wav.contiguous(), int(sr)


def save_audio(
    path: str | os.PathLike,
    wav: torch.Tensor | np.ndarray,
    sample_rate: int,
    *,
    subtype: Literal["PCM_16", "PCM_24", "FLOAT"] = "PCM_16",
) -> Path:
    """Write ``wav`` (``[T]`` or ``[C, T]``) as a WAV file, clipped to [-1, 1], atomically.

    The file is written to a temporary name in the same folder and renamed, so a reader never sees half a file.
    ``subtype`` is 16-bit PCM by default, ``FLOAT`` for 32-bit float. Returns the path.
    """
    path = Path(path)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to("cpu", torch.float32).numpy()
    data = np.asarray(wav, dtype=np.float32)
    if data.ndim not in (1, 2) or data.shape[-1] == 0:
        raise AudioError(f"{path}: cannot save audio of shape {tuple(data.shape)} (expected [T] or [C, T], T > 0)")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: refusing to save audio with non-finite samples")
    data = np.clip(data, -1.0, 1.0)
    if data.ndim == 2:
        data = data.T  # soundfile wants [T, C]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            sf.write(f, data, int(sample_rate), subtype=subtype, format="WAV")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _resolve_list_entry(entry: str, base: Path) -> Path:
    p = Path(entry).expanduser()
    if not p.is_absolute():
        p = base / p
    if p.suffix.lower() not in AUDIO_EXTENSIONS:
        # LJSpeech's metadata.csv and HiFi-GAN's file lists name clips by id: ``LJ001-0001|text``.
        for cand in (p.with_name(p.name + ".wav"), p.parent / "wavs" / (p.name + ".wav")):
            if cand.exists():
                return cand
        return p.with_name(p.name + ".wav")
    return p


def list_audio_files(root_or_filelist: str | os.PathLike, *, allow_outside_root: bool = False) -> list[Path]:
    """The audio files of a folder (recursive, sorted) or of a file list.

    A file list holds one entry per line: ``path`` or ``path|text...`` (LJSpeech style; only the first field is
    used). Blank lines and lines starting with ``#`` are skipped. Relative paths resolve against the list's folder;
    an entry without an audio extension is taken as a clip id (``LJ001-0001`` -> ``LJ001-0001.wav`` or
    ``wavs/LJ001-0001.wav``). An entry that resolves outside the list's folder raises :class:`AudioError` unless
    ``allow_outside_root``. Existence is not checked here (datasets report missing files).
    """
    root = Path(root_or_filelist)
    if root.is_dir():
        return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not root.is_file():
        raise AudioError(f"{root}: no such folder or file list")
    base = root.parent.resolve()
    files: list[Path] = []
    for lineno, line in enumerate(root.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.split("|", 1)[0].strip()
        if not entry or entry.startswith("#"):
            continue
        p = _resolve_list_entry(entry, base)
        if not allow_outside_root and not p.resolve().is_relative_to(base):
            raise AudioError(
                f"{root}:{lineno}: {entry!r} resolves to {p.resolve()}, outside the list's folder {base} "
                "(pass allow_outside_root=True to accept it)"
            )
        files.append(p)
    return files
