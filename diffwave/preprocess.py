"""Computing mel spectrograms once and caching them on disk.

A cached mel is ``OUT/<stem>.<key>.npy`` (``[n_mels, frames]`` float32, the mel of the whole clip, resampled to the
config's rate and clipped to [-1, 1] first). ``key`` hashes the absolute audio path, the file's size and
modification time and the whole :class:`~diffwave.mel.MelConfig`, so a changed config or a re-recorded file never
reuses a stale mel. :class:`~diffwave.data.AudioMelDataset` reads (and fills) the same cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from diffcore.atomic import atomic_write, write_json
from diffwave.audio import AudioError, load_audio
from diffwave.mel import MelConfig, compute_mel

__all__ = ["preprocess", "mel_cache_path", "read_cached_mel", "write_mel", "mel_of_file"]

log = logging.getLogger(__name__)


def mel_cache_path(audio_path: str | os.PathLike, config: MelConfig, cache_dir: str | os.PathLike) -> Path:
    """Where the mel of ``audio_path`` under ``config`` is cached in ``cache_dir``."""
    p = Path(audio_path).resolve()
    try:
        st = p.stat()
        stamp = [st.st_size, st.st_mtime_ns]
    except OSError:
        stamp = None
    blob = json.dumps({"path": str(p), "stat": stamp, "mel": config.to_dict()}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{p.stem}.{key}.npy"


def write_mel(path: str | os.PathLike, mel: torch.Tensor | np.ndarray) -> None:
    """Save ``mel`` as float32 ``.npy`` with the package's one atomic writer (:func:`diffcore.checkpoint.atomic_write`:
    temporary file, fsync, rename; the usual file mode; ``CheckpointError`` naming the file when the write fails)."""
    arr = mel.detach().cpu().numpy() if isinstance(mel, torch.Tensor) else np.asarray(mel)
    arr = arr.astype(np.float32, copy=False)
    atomic_write(path, lambda f: np.save(f, arr))


def read_cached_mel(path: str | os.PathLike, config: MelConfig, num_samples: int | None = None) -> torch.Tensor | None:
    """The cached mel at ``path`` if it exists and has ``config.n_mels`` bands (and the frame count of a clip of
    ``num_samples`` samples, when given); otherwise ``None``."""
    path = Path(path)
    if not path.is_file():
        return None
    from diffcore.arrays import ArrayFileError, load_npy, read_npy_header
    from diffwave.mel import MAX_MEL_FILE_BYTES, max_mel_frames

    try:  # the header's shape is checked before the data are read: a damaged cache allocates nothing
        with open(path, "rb") as f:
            shape = read_npy_header(f, str(path)).shape
        expected = config.num_frames(num_samples) if num_samples is not None else (shape[-1] if shape else 0)
        if len(shape) != 2 or shape != (config.n_mels, expected) or expected > max_mel_frames(config):
            log.warning("ignoring cached mel %s of shape %s (expected [%d, %d])", path, shape, config.n_mels,
                        expected)
            return None
        arr, _ = load_npy(path, max_bytes=MAX_MEL_FILE_BYTES)
    except (OSError, ArrayFileError) as e:
        log.warning("ignoring unreadable cached mel %s (%s)", path, e)
        return None
    return torch.from_numpy(arr)


def mel_of_file(
    path: str | os.PathLike, config: MelConfig, *, strict: bool = False, log_resample: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(wav [T], mel [n_mels, frames])`` of one file at ``config.sample_rate``; raises ``AudioError``."""
    wav, _ = load_audio(path, config.sample_rate, strict=strict, log_resample=log_resample)
    wav = wav.clamp(-1.0, 1.0)
    if wav.shape[-1] < config.min_samples():
        raise AudioError(
            f"{path}: {wav.shape[-1]} samples is too short for a {config.preset} mel "
            f"(at least {config.min_samples()} needed)"
        )
    return wav, compute_mel(wav, config)


def _work(job: tuple[str, str, dict, bool]) -> tuple[str, str, str, int]:
    """One file: ``(audio path, status, message, frames)``; status ``computed`` or ``failed``."""
    audio_path, out_path, config_dict, strict = job
    config = MelConfig.from_dict(config_dict)
    try:
        _, mel = mel_of_file(audio_path, config, strict=strict)
        write_mel(out_path, mel)
        return audio_path, "computed", "", int(mel.shape[-1])
    except (AudioError, ValueError) as e:
        return audio_path, "failed", str(e), 0


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe


def preprocess(
    files: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    mel_config: MelConfig,
    num_workers: int | None = None,
    progress: bool = True,
    *,
    strict: bool = False,
) -> dict[str, Any]:
    """Compute and cache the mel of every file (see the module docstring); skip and report unusable files.

    Args:
        files: audio paths. out_dir: the cache folder (created). num_workers: processes (``None``: all CPUs,
            ``0``: in this process). progress: show a tqdm bar. strict: reject files at another sample rate.

    Returns:
        a summary: ``total``, ``computed``, ``cached`` (already present), ``failed``, ``failures`` (a list of
        ``(path, reason)``), ``frames`` (of the computed mels), ``out_dir``; it is also written to
        ``out_dir/summary.json`` together with the mel config.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [str(Path(f)) for f in files]
    jobs, cached = [], 0
    for p in paths:
        target = mel_cache_path(p, mel_config, out)
        if target.is_file():
            cached += 1
        else:
            jobs.append((p, str(target), mel_config.to_dict(), strict))
    computed, frames, failures = 0, 0, []
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    workers = min(workers, len(jobs))
    bar = tqdm(total=len(paths), initial=cached, disable=not progress, desc="mel", unit="file")
    pool = None
    try:
        if workers > 1:
            pool = multiprocessing.get_context().Pool(workers, initializer=_init_worker)
            results: Iterable = pool.imap_unordered(_work, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
        else:
            results = map(_work, jobs)
        for audio_path, status, message, n in results:
            if status == "computed":
                computed += 1
                frames += n
            else:
                failures.append((audio_path, message))
                log.warning("skipping %s", message)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    if failures:
        log.warning("preprocess: %d of %d files could not be used and were skipped", len(failures), len(paths))
    summary = {
        "total": len(paths),
        "computed": computed,
        "cached": cached,
        "failed": len(failures),
        "failures": failures,
        "frames": frames,
        "out_dir": str(out),
    }
    write_json(out / "summary.json", {**summary, "mel": mel_config.to_dict()})
    return summary
