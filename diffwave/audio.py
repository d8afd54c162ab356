"""Reading, validating and writing audio files.

Every way a file can be unusable (missing, unreadable, truncated, empty, silent, NaN, an implausible header, too long
to hold in memory) raises :class:`AudioError` with a message that names the file, so that a data pipeline can report
and skip it. Memory stays bounded: the header's length is checked against ``max_duration_s`` before anything is
allocated, and long clips are resampled in pieces. Waveforms are float32 tensors
in [-1, 1] (integer PCM is scaled by 2^(bits-1), as soundfile does); mono is ``[T]``, multi-channel ``[C, T]``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import struct
import threading
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
    "OUTPUT_FORMATS",
    "audio_info",
    "load_audio",
    "save_audio",
    "list_audio_files",
    "resampled_length",
]

log = logging.getLogger(__name__)

#: Peak amplitude below which a clip counts as silent (-80 dBFS; a 16-bit LSB is about -90 dBFS).
SILENCE_PEAK = 1e-4

#: Longest clip :func:`load_audio` reads by default (one hour: 318 MB as float32 mono at 22.05 kHz).
MAX_DURATION_S = 3600.0
#: Plausible header values; a corrupt or fuzzed header outside them is rejected before any allocation.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE, MAX_CHANNELS = 1000, 1_000_000, 64
#: Largest sinc-resampling kernel accepted (elements): rates that share almost no common factor (44101 -> 22050 Hz)
#: would need gigabytes of kernel.
MAX_RESAMPLE_KERNEL = 1 << 24
#: Input samples resampled per piece for long clips (bounds the convolution's intermediate buffers).
RESAMPLE_CHUNK = 1 << 19

#: Output suffixes ``save_audio`` writes, and the container each gets (anything else is written as WAV).
OUTPUT_FORMATS: dict[str, str] = {".wav": "WAV", ".wave": "WAV", ".flac": "FLAC"}

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
    from diffcore.paths import not_a_file_reason

    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if not path.is_file():
        raise AudioError(f"{path}: {not_a_file_reason(path)}")
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
                after = pos + 8 + csize + (csize & 1)
                if size - after >= 1024 and not _chunk_follows(f, after, size):
                    # a writer that never patched the header: the samples go on past the announced length
                    log.warning("%s: the WAV header announces %d bytes of samples, but %d more bytes follow them; "
                                "only the announced %.0f%% is read (fix the header, e.g. re-encode the file)",
                                path, csize, size - after, 100.0 * csize / max(1, csize + size - after))
                return None
            pos += 8 + csize + (csize & 1)  # chunks are word-aligned
    return None


def _chunk_follows(f, at: int, size: int) -> bool:
    """Whether a plausible RIFF chunk (four printable ASCII id bytes, a size that fits the file) starts at ``at``."""
    f.seek(at)
    head = f.read(8)
    if len(head) < 8:
        return False
    cid, csize = head[:4], struct.unpack("<I", head[4:])[0]
    return all(32 <= c < 127 for c in cid) and at + 8 + csize <= size + 1


def _check_header(path: Path, frames: int, sample_rate: int, channels: int, max_duration_s: float | None) -> None:
    """Reject headers that are implausible (a corrupt file) or announce more audio than ``max_duration_s``."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{path}: implausible sample rate {sample_rate} Hz in the header (expected {MIN_SAMPLE_RATE} to "
            f"{MAX_SAMPLE_RATE} Hz; a corrupt file?)"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"{path}: implausible channel count {channels} in the header (at most {MAX_CHANNELS})")
    if frames <= 0:
        raise AudioError(f"{path}: zero-length audio (no samples)")
    if max_duration_s is not None and frames > max_duration_s * sample_rate:
        raise AudioError(
            f"{path}: too long ({frames / sample_rate:.0f} s; the limit is {max_duration_s:g} s): split it into "
            "shorter files, or pass a larger max_duration_s"
        )


def audio_info(path: str | os.PathLike, *, max_duration_s: float | None = MAX_DURATION_S) -> AudioInfo:
    """Read a file's header (cheap); raise :class:`AudioError` if it is missing, unreadable, truncated, empty,
    implausible (sample rate, channels) or longer than ``max_duration_s`` (``None``: no limit)."""
    path = Path(path)
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: unreadable or corrupt audio file ({e})") from None
    problem = _wav_truncation(path)
    if problem:
        raise AudioError(f"{path}: {problem}")
    _check_header(path, int(info.frames), int(info.samplerate), int(info.channels), max_duration_s)
    return AudioInfo(path=path, frames=int(info.frames), sample_rate=int(info.samplerate), channels=int(info.channels))


def resampled_length(num_samples: int, orig_sr: int, new_sr: int) -> int:
    """Length of ``torchaudio.functional.resample``'s output for an input of ``num_samples`` samples."""
    if orig_sr == new_sr:
        return num_samples
    g = np.gcd(int(orig_sr), int(new_sr))
    orig, new = orig_sr // g, new_sr // g
    return -(-new * num_samples // orig)  # ceil(new * T / orig)


def _resample_kernel_size(orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> int:
    """Elements of ``torchaudio.functional.resample``'s sinc kernel ``[new', 1, 2·width + orig']`` (rates divided by
    their gcd; ``width = ⌈lowpass_filter_width · orig' / (rolloff · min(orig', new'))⌉``)."""
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = orig_sr // g, new_sr // g
    width = math.ceil(lowpass_filter_width * orig / (min(orig, new) * rolloff))
    return new * (2 * width + orig)


def _resample(wav: torch.Tensor, orig_sr: int, new_sr: int, chunk: int = RESAMPLE_CHUNK) -> torch.Tensor:
    """``torchaudio.functional.resample(wav [..., T], orig_sr, new_sr)``, computed in pieces for long clips.

    torchaudio's output block ``b`` (``new'`` samples) reads the input samples ``[b·orig' − w, b·orig' + w + orig')``
    only (``w``: the kernel's half width), with zeros beyond the clip. So cutting the input at multiples of ``orig'``
    and giving each piece ``c ≥ w + orig'`` samples of context on both sides yields the very same blocks, while the
    convolution's unfolded input (``2w + orig'`` values per output block) stays the size of one piece.
    """
    T = wav.shape[-1]
    if orig_sr == new_sr:
        return wav
    if T <= 2 * chunk:
        return AF.resample(wav, orig_sr, new_sr)
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = orig_sr // g, new_sr // g
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))
    context = -(-(width + orig) // orig) * orig  # a multiple of orig' of at least w + orig'
    step = max(1, chunk // orig) * orig  # input samples per piece, a multiple of orig'
    pieces = []
    for start in range(0, T, step):
        end = min(T, start + step)
        lo, hi = max(0, start - context), min(T, end + context)
        out = AF.resample(wav[..., lo:hi], orig_sr, new_sr)
        first = (start - lo) // orig * new
        if end == T:
            pieces.append(out[..., first:])
        else:
            pieces.append(out[..., first : first + (end - start) // orig * new])
    return torch.cat(pieces, dim=-1)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    *,
    strict: bool = False,
    mono: bool = True,
    silence_peak: float = SILENCE_PEAK,
    log_resample: bool = True,
    max_duration_s: float | None = MAX_DURATION_S,
) -> tuple[torch.Tensor, int]:
    """Read an audio file as float32 in [-1, 1].

    Args:
        path: a WAV/FLAC/OGG/... file (8/16/24/32-bit integer PCM or float).
        sample_rate: the rate the caller needs; a file at another rate is resampled (band-limited sinc,
            ``torchaudio.functional.resample``) with a logged warning, or rejected when ``strict``.
        mono: average the channels (``[T]``); otherwise return ``[C, T]``.
        silence_peak: a clip whose peak |x| is below this is rejected as silent.
        log_resample: log the resampling warning (a dataset that reports it once for all files turns it off).
        max_duration_s: refuse a file whose header announces more than this many seconds (``None``: no limit),
            so that memory stays bounded (about ``4 · channels · frames`` bytes, plus one resampling piece).

    Returns:
        ``(wav, sr)``: ``wav`` is ``[T]`` (or ``[C, T]``) float32, ``sr`` the rate of ``wav``.

    Raises:
        AudioError: missing, empty, unreadable, corrupt or truncated file; no samples; non-finite samples; silence;
            a different sample rate in strict mode; an implausible header; a file longer than ``max_duration_s``;
            rates too awkward to resample (no common factor).
    """
    path = Path(path)
    _check_exists(path)
    problem = _wav_truncation(path)
    if problem:
        raise AudioError(f"{path}: {problem}")
    try:
        with sf.SoundFile(str(path)) as f:
            # The header is checked before sf.read allocates frames x channels floats from it.
            _check_header(path, int(f.frames), int(f.samplerate), int(f.channels), max_duration_s)
            # Some codecs (GSM 6.10, ...) are not seekable in libsndfile: they need the frame count given.
            data = f.read(-1 if f.seekable() else int(f.frames), dtype="float32", always_2d=True)  # [T, C]
            sr = int(f.samplerate)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError, MemoryError) as e:
        if isinstance(e, AudioError):
            raise
        raise AudioError(f"{path}: unreadable or corrupt audio file ({type(e).__name__}: {e})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: zero-length audio (no samples)")
    bad = ~np.isfinite(data)
    if bad.any():
        raise AudioError(f"{path}: {int(bad.sum())} non-finite samples (NaN or Inf)")
    if mono:  # straight from [T, C], without a transposed copy of a long clip
        wav = torch.from_numpy(np.ascontiguousarray(data[:, 0]) if data.shape[1] == 1 else data.mean(axis=1))
    else:
        wav = torch.from_numpy(np.ascontiguousarray(data.T))  # [C, T]
    del data
    peak = float(wav.abs().max())
    if peak < silence_peak:
        raise AudioError(f"{path}: silent (peak |x| = {peak:.3g} is below {silence_peak:g})")
    if sample_rate is not None and sr != sample_rate:
        if strict:
            raise AudioError(f"{path}: sample rate is {sr} Hz but {sample_rate} Hz is required (strict mode)")
        if _resample_kernel_size(sr, sample_rate) > MAX_RESAMPLE_KERNEL:
            raise AudioError(
                f"{path}: cannot resample {sr} Hz to {sample_rate} Hz (the rates share almost no common factor, so "
                f"the resampling filter would be huge); convert the file to {sample_rate} Hz first"
            )
        if log_resample:
            log.warning("resampling %s from %d Hz to %d Hz", path, sr, sample_rate)
        wav = _resample(wav, sr, sample_rate)
        sr = sample_rate
    return wav.contiguous(), int(sr)


def save_audio(
    path: str | os.PathLike,
    wav: torch.Tensor | np.ndarray,
    sample_rate: int,
    *,
    subtype: Literal["PCM_16", "PCM_24", "FLOAT"] = "PCM_16",
) -> Path:
    """Write ``wav`` (``[T]`` or ``[C, T]``) as a WAV file (FLAC for a ``.flac`` path), clipped to [-1, 1].

    Written through :func:`diffcore.checkpoint.atomic_write`, the package's one atomic writer: a temporary name in
    the same folder, fsync, rename, so a reader never sees half a file and the mode follows the umask like every
    other output; a failed write (disk full) raises ``CheckpointError`` naming the file and leaves nothing behind.
    ``subtype`` is 16-bit PCM by default, ``FLOAT`` for 32-bit float (WAV only). Returns the path.
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
    fmt = OUTPUT_FORMATS.get(path.suffix.lower(), "WAV")
    if fmt != "WAV" and subtype == "FLOAT":
        raise AudioError(f"{path}: {fmt} cannot hold float samples; write a .wav")
    from diffcore.checkpoint import atomic_write  # the one atomic writer of the package (mode, fsync, rename)

    with _signals_deferred():
        atomic_write(path, lambda f: sf.write(f, data, int(sample_rate), subtype=subtype, format=fmt))
    return path


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT and SIGTERM wait until the file in flight is written (in the main thread; elsewhere nothing changes),
    then reach their own handlers: Ctrl-C during a write stops the run after a whole file, not inside soundfile's
    write callback (where cffi swallowed the KeyboardInterrupt and the write failed with an AssertionError)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):  # each signal once, in the order it came, to its own handler
            signal.raise_signal(sig)


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
        from diffcore.paths import not_a_file_reason

        reason = not_a_file_reason(root)
        raise AudioError(f"{root}: no such folder or file list" if reason == "does not exist" else
                         f"{root}: {reason.replace(', not a regular file', '')}, not a folder or a file list")
    base = root.parent.resolve()
    try:
        text = root.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AudioError(f"{root}: not a file list (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except OSError as e:
        raise AudioError(f"{root}: cannot read the file list ({e.strerror or e})") from None
    files: list[Path] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        entry = line.split("|", 1)[0].strip()
        if not entry or entry.startswith("#"):
            continue
        if "\0" in entry:
            raise AudioError(f"{root}:{lineno}: the entry contains a NUL character (not a file list?)")
        p = _resolve_list_entry(entry, base)
        if not allow_outside_root and not p.resolve().is_relative_to(base):
            raise AudioError(
                f"{root}:{lineno}: {entry!r} resolves to {p.resolve()}, outside the list's folder {base} "
                "(pass allow_outside_root=True to accept it)"
            )
        files.append(p)
    return files
