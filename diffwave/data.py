"""Audio datasets for DiffWave: (audio, mel) crops for the vocoder, fixed-length clips for unconditional models.

Alignment (both mel presets): mel frame ``i`` conditions audio samples ``[i*hop, (i+1)*hop)``, as in lmnt's
trainer. A clip of ``T`` samples gives ``n = T // hop`` usable frames; the audio is cut to ``n * hop`` samples and the
mel to its first ``n`` frames (``diffwave`` has ``n + 1`` centred frames, ``hifigan`` exactly ``n``).

Unusable files never stop a run: they are found when the dataset is built (header) or first read, reported by name
and counted, and skipped. Short clips are padded or dropped, and the count is logged once.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from diffcore.config import ConfigError
from diffwave.audio import AUDIO_EXTENSIONS, AudioError, audio_info, list_audio_files, load_audio, resampled_length
from diffwave.mel import MelConfig, compute_mel
from diffwave.preprocess import mel_cache_path, read_cached_mel, write_mel

from diffwave.recipe import DataConfig, holdout_indices

__all__ = [
    "AudioMelDataset",
    "UnconditionalAudioDataset",
    "ljspeech_files",
    "fsdd_files",
    "fsdd_label",
    "sc09_files",
    "resolve_files",
    "split_files",
    "SC09_DIGITS",
    "download_ljspeech",
    "download_speechcommands",
]

log = logging.getLogger(__name__)

SC09_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)\.wav$")


def _probe(files: Iterable[str | os.PathLike], sample_rate: int, strict: bool, who: str):
    """Header-check every file: ``(kept [(path, samples at sample_rate)], skipped [(path, reason)])``; logs once."""
    kept, skipped, rates = [], [], {}
    for f in files:
        try:
            info = audio_info(f)
            if info.sample_rate != sample_rate:
                if strict:
                    raise AudioError(f"{f}: sample rate is {info.sample_rate} Hz, {sample_rate} Hz required (strict)")
                rates[info.sample_rate] = rates.get(info.sample_rate, 0) + 1
            kept.append((Path(f), resampled_length(info.frames, info.sample_rate, sample_rate)))
        except AudioError as e:
            skipped.append((Path(f), str(e)))
    for p, reason in skipped:
        log.warning("%s: skipping %s", who, reason)
    if skipped:
        log.warning("%s: skipped %d unusable file(s) of %d", who, len(skipped), len(kept) + len(skipped))
    for rate, n in rates.items():
        log.warning("%s: %d file(s) at %d Hz will be resampled to %d Hz", who, n, rate, sample_rate)
    if not kept:
        raise AudioError(f"{who}: none of the {len(skipped)} files is usable" if skipped else f"{who}: no files given")
    return kept, skipped


class _SkippingDataset(Dataset):
    """Shared behaviour: a file that fails on reading is reported once and replaced by the next usable one."""

    files: list[Path]

    def __init__(self) -> None:
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self.files)
        for k in range(n):
            i = (index + k) % n
            if i in self.bad:
                continue
            try:
                return self._load(i)
            except AudioError as e:
                self.bad.add(i)
                log.warning("%s: skipping %s (%d unusable so far)", type(self).__name__, e, len(self.bad))
        raise AudioError(f"{type(self).__name__}: every one of its {n} file(s) failed to load (see the warnings "
                         "above; e.g. all silent or unreadable)")


class AudioMelDataset(_SkippingDataset):
    """Aligned (audio, mel) crops for vocoder training.

    Args:
        files: audio paths (any rate; resampled to ``mel_config.sample_rate`` with one logged summary).
        mel_config: the mel front end.
        crop_frames: frames per item (``None``: the whole clip, for validation).
        cache_dir: read mels from (and write missing ones to) this cache, the one that
            :func:`~diffwave.preprocess.preprocess` fills.
        min_frames: clips with fewer usable frames are dropped (default 1, or ``crop_frames`` when not
            ``pad_short``; never fewer than the mel front end needs).
        pad_short: zero-pad clips shorter than ``crop_frames`` (their mel is computed on the padded audio) instead
            of dropping them.
        strict: drop files at another sample rate instead of resampling them.
        generator: a ``torch.Generator`` for the crop positions (default: the global RNG, which DataLoader workers
            seed differently; a generator given here is copied into each worker unchanged).

    Items: ``{"audio": [crop_frames * hop], "mel": [n_mels, crop_frames]}`` float32, ``mel[:, i]`` aligned with
    ``audio[i*hop:(i+1)*hop]``.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        mel_config: MelConfig,
        crop_frames: int | None = 62,
        *,
        cache_dir: str | os.PathLike | None = None,
        min_frames: int | None = None,
        pad_short: bool = True,
        strict: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.config = mel_config
        self.crop_frames = crop_frames
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.pad_short = pad_short
        self.strict = strict
        self.generator = generator
        hop = mel_config.hop_length
        kept, self.skipped = _probe(files, mel_config.sample_rate, strict, "AudioMelDataset")
        floor = min_frames if min_frames is not None else 1
        if crop_frames is not None and not pad_short:
            floor = max(floor, crop_frames)
        floor = max(floor, -(-mel_config.min_samples() // hop))  # the mel itself needs this much audio
        self.files = [p for p, n in kept if n // hop >= floor]
        self.num_dropped = len(kept) - len(self.files)
        self.num_padded = (
            sum(1 for p, n in kept if floor <= n // hop < crop_frames) if crop_frames is not None and pad_short else 0
        )
        if self.num_dropped:
            log.warning("AudioMelDataset: dropped %d clip(s) shorter than %d frames", self.num_dropped, floor)
        if self.num_padded:
            log.warning("AudioMelDataset: %d clip(s) shorter than %d frames will be zero-padded", self.num_padded,
                        crop_frames)
        if not self.files:
            raise AudioError(f"AudioMelDataset: all {len(kept)} clips are shorter than {floor} frames")

    def _mel(self, path: Path, wav: torch.Tensor) -> torch.Tensor:
        """The mel ``[n_mels, num_frames(T)]`` of the whole clip ``wav`` ``[T]``, through the cache if there is one."""
        if self.cache_dir is None:
            return compute_mel(wav, self.config)
        target = mel_cache_path(path, self.config, self.cache_dir)
        mel = read_cached_mel(target, self.config, wav.shape[-1])
        if mel is None:
            mel = compute_mel(wav, self.config)
            write_mel(target, mel)
        return mel

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        path, hop, crop = self.files[index], self.config.hop_length, self.crop_frames
        wav, _ = load_audio(path, self.config.sample_rate, strict=self.strict, log_resample=False)
        wav = wav.clamp(-1.0, 1.0)
        n = wav.shape[-1] // hop
        if crop is not None and n < crop:  # short clip: the mel of the zero-padded audio
            wav = F.pad(wav, (0, crop * hop - wav.shape[-1]))
            return {"audio": wav, "mel": compute_mel(wav, self.config)[:, :crop].float()}
        if n < 1 or wav.shape[-1] < self.config.min_samples():
            raise AudioError(f"{path}: {wav.shape[-1]} samples is too short for a {self.config.preset} mel")
        mel = self._mel(path, wav)
        if crop is None:
            return {"audio": wav[: n * hop].contiguous(), "mel": mel[:, :n].float().contiguous()}
        start = int(torch.randint(0, n - crop + 1, (1,), generator=self.generator))
        return {
            "audio": wav[start * hop : (start + crop) * hop].contiguous(),
            "mel": mel[:, start : start + crop].float().contiguous(),
        }


class UnconditionalAudioDataset(_SkippingDataset):
    """Fixed-length clips for unconditional generation (the DiffWave paper's SC09 setting: 16000 samples at 16 kHz;
    8000 at 8 kHz for FSDD).

    Longer clips are cropped (``crop="random"``, or ``"start"``/``"center"`` for a deterministic window); shorter
    ones are zero-padded at the end. Items: ``{"audio": [length_samples]}`` plus ``"label"`` (a 0-dim long tensor)
    when ``labels`` is given (one per file, e.g. :func:`fsdd_label`).
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        sample_rate: int,
        length_samples: int,
        *,
        crop: Literal["random", "start", "center"] = "random",
        labels: Sequence[int] | None = None,
        strict: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if length_samples < 1:
            raise ValueError(f"length_samples must be positive, got {length_samples}")
        if labels is not None and len(labels) != len(files):
            raise ValueError(f"{len(labels)} labels for {len(files)} files")
        self.sample_rate, self.length, self.crop = sample_rate, length_samples, crop
        self.strict, self.generator = strict, generator
        label_of = {Path(f): int(l) for f, l in zip(files, labels)} if labels is not None else None
        kept, self.skipped = _probe(files, sample_rate, strict, "UnconditionalAudioDataset")
        self.files = [p for p, _ in kept]
        self.labels = [label_of[p] for p in self.files] if label_of is not None else None
        self.num_padded = sum(1 for _, n in kept if n < length_samples)
        if self.num_padded:
            log.info("UnconditionalAudioDataset: %d of %d clips are shorter than %d samples and will be zero-padded",
                     self.num_padded, len(kept), length_samples)

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        wav, _ = load_audio(self.files[index], self.sample_rate, strict=self.strict, log_resample=False)
        wav = wav.clamp(-1.0, 1.0)
        excess = wav.shape[-1] - self.length
        if excess > 0:
            if self.crop == "random":
                start = int(torch.randint(0, excess + 1, (1,), generator=self.generator))
            else:
                start = 0 if self.crop == "start" else excess // 2
            wav = wav[start : start + self.length]
        elif excess < 0:
            wav = F.pad(wav, (0, -excess))
        item = {"audio": wav.contiguous()}
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[index], dtype=torch.long)
        return item


# ---------------------------------------------------------------------------------------------------------------
# Dataset layouts


def ljspeech_files(root: str | os.PathLike) -> list[Path]:
    """The clips of an LJSpeech folder (``LJSpeech-1.1/`` with ``wavs/`` and ``metadata.csv``, or ``wavs/`` itself).

    With ``metadata.csv``, clips come in its order and listed clips missing from ``wavs/`` are reported and left
    out; without it, all ``wavs/*.wav`` sorted by name.
    """
    root = Path(root)
    wavs = root / "wavs" if (root / "wavs").is_dir() else root
    if not wavs.is_dir():
        raise FileNotFoundError(f"{root}: not an LJSpeech folder (no wavs/ inside)")
    meta = wavs.parent / "metadata.csv"
    if meta.is_file():
        ids = [line.split("|", 1)[0].strip() for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
        files = [wavs / f"{i}.wav" for i in ids]
        inside = wavs.resolve()
        for i, f in zip(ids, files):  # metadata.csv is a file list: it may not reach outside the dataset
            if "\0" in i or not f.resolve().is_relative_to(inside):
                raise AudioError(f"{meta}: clip id {i!r} resolves outside {wavs}")
        missing = [f for f in files if not f.is_file()]
        if missing:
            log.warning(
                "ljspeech_files: %d clip(s) listed in %s are missing (first: %s)", len(missing), meta, missing[0]
            )
        files = [f for f in files if f.is_file()]
    else:
        files = sorted(wavs.glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"{wavs}: no .wav files")
    return files


def fsdd_label(path: str | os.PathLike) -> int:
    """The digit of an FSDD file ``{digit}_{speaker}_{index}.wav``."""
    m = _FSDD_NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path}: not an FSDD file name ({{digit}}_{{speaker}}_{{index}}.wav)")
    return int(m.group(1))


def fsdd_files(root: str | os.PathLike, split: Literal["train", "test", "all"] = "train") -> list[Path]:
    """The Free Spoken Digit Dataset's clips (``root`` holds ``recordings/`` or is it), sorted.

    The official split: recordings with index 0-4 are the test set, the rest the training set.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    root = Path(root)
    rec = root / "recordings" if (root / "recordings").is_dir() else root
    if not rec.is_dir():
        raise FileNotFoundError(f"{root}: not an FSDD folder (no recordings/ inside)")
    files, other = [], 0
    for p in sorted(rec.glob("*.wav")):
        m = _FSDD_NAME.match(p.name)
        if m is None:
            other += 1
            continue
        is_test = int(m.group(3)) < 5
        if split == "all" or (split == "test") == is_test:
            files.append(p)
    if other:
        log.warning("fsdd_files: ignored %d .wav file(s) in %s not named {digit}_{speaker}_{index}.wav", other, rec)
    return files


def sc09_files(root: str | os.PathLike, split: Literal["train", "valid", "test", "all"] = "train") -> list[Path]:
    """SC09 (the digits ``zero`` ... ``nine`` of Speech Commands) from an extracted Speech Commands folder.

    ``root`` is the folder holding ``zero/``, ``one/``, ... and ``validation_list.txt``/``testing_list.txt``, or a
    folder above it as torchaudio lays it out (``SpeechCommands/speech_commands_v0.02``). Labels:
    ``SC09_DIGITS.index(path.parent.name)``.
    """
    if split not in ("train", "valid", "test", "all"):
        raise ValueError(f"split must be 'train', 'valid', 'test' or 'all', got {split!r}")
    root = Path(root)
    for cand in (root, root / "speech_commands_v0.02", root / "SpeechCommands" / "speech_commands_v0.02"):
        if (cand / "zero").is_dir():
            root = cand
            break
    else:
        raise FileNotFoundError(f"{root}: no Speech Commands digit folders (zero/ ... nine/) found")

    def listed(name: str) -> set[str]:
        f = root / name
        return {ln.strip() for ln in f.read_text().splitlines() if ln.strip()} if f.is_file() else set()

    valid, test = listed("validation_list.txt"), listed("testing_list.txt")
    files = []
    for digit in SC09_DIGITS:
        for p in sorted((root / digit).glob("*.wav")):
            rel = f"{digit}/{p.name}"
            part = "test" if rel in test else "valid" if rel in valid else "train"
            if split in ("all", part):
                files.append(p)
    return files


def _is_fsdd_name(p: Path) -> bool:
    try:
        fsdd_label(p)
        return True
    except ValueError:
        return False


def _detect_layout(root: Path) -> str:
    if root.is_file():
        return "files"
    if (root / "metadata.csv").is_file() or (root / "wavs").is_dir():
        return "ljspeech"
    rec = root / "recordings" if (root / "recordings").is_dir() else root
    wavs = list(rec.glob("*.wav"))[:50]
    if wavs and all(_is_fsdd_name(p) for p in wavs):
        return "fsdd"
    if any((c / "zero").is_dir() for c in (root, root / "speech_commands_v0.02",
                                             root / "SpeechCommands" / "speech_commands_v0.02")):
        return "sc09"
    return "files"


def resolve_files(data: DataConfig) -> list[Path]:
    """All clips that ``data`` names (training and held-out together), in a stable order."""
    if data.path is None:
        raise ConfigError("no training data: set data.path=DIR in the recipe or on the command line (or --data DIR)")
    root = Path(data.path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data.path {str(root)!r} does not exist")
    layout = data.layout if data.layout != "auto" else _detect_layout(root)
    split = data.split
    if layout == "ljspeech":
        files = ljspeech_files(root)
    elif layout == "fsdd":
        if split == "valid":
            raise ConfigError("FSDD has no 'valid' split (use train, test or all)")
        files = fsdd_files(root, split)  # type: ignore[arg-type]
    elif layout == "sc09":
        files = sc09_files(root, split)  # type: ignore[arg-type]
    elif root.is_file() and root.suffix.lower() in AUDIO_EXTENSIONS:
        files = [root]  # a single recording
    else:
        files = list_audio_files(root)
    if not files:
        kinds = ", ".join(sorted(AUDIO_EXTENSIONS))
        raise FileNotFoundError(f"data.path {str(root)!r} ({layout} layout) holds no audio files ({kinds})")
    return list(files)


def split_files(data: DataConfig) -> tuple[list[Path], list[Path]]:
    """``(training clips, held-out clips)`` of ``data``: the clips of :func:`resolve_files`, the held-out ones chosen
    by :func:`diffwave.recipe.holdout_indices` with ``data.holdout_scheme``."""
    files = resolve_files(data)
    held = set(holdout_indices(len(files), data.holdout, data.holdout_scheme))
    train, heldout = [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]
    check_heldout(heldout)
    return train, heldout


def check_heldout(files: Sequence[Path]) -> None:
    """Read every held-out clip once (they are few): a held-out split made only of unusable clips (broken, silent,
    empty) is a :class:`ConfigError` before training starts, since every validation would measure nothing; some
    unusable ones are a warning naming them."""
    bad = []
    for f in files:
        try:
            load_audio(f, log_resample=False)
        except AudioError as e:
            bad.append(str(e))
    if bad and len(bad) == len(files):
        raise ConfigError(f"data.holdout: all {len(files)} held-out clip(s) are unusable (first: {bad[0]}); "
                          "validation would measure nothing: fix or replace them, change data.holdout_scheme, or "
                          "set data.holdout=0")
    for reason in bad:
        log.warning("held-out split: %s; validation uses the other %d clip(s)", reason, len(files) - len(bad))


def download_ljspeech(root: str | os.PathLike) -> list[Path]:
    """Download and extract LJSpeech 1.1 into ``root`` (through ``torchaudio.datasets.LJSPEECH``; needs network,
    2.6 GB) and return :func:`ljspeech_files` of it."""
    import torchaudio.datasets

    Path(root).mkdir(parents=True, exist_ok=True)
    torchaudio.datasets.LJSPEECH(os.fspath(root), download=True)
    return ljspeech_files(Path(root) / "LJSpeech-1.1")


def download_speechcommands(root: str | os.PathLike) -> Path:
    """Download and extract Speech Commands v0.02 into ``root`` (through ``torchaudio.datasets.SPEECHCOMMANDS``;
    needs network, 2.3 GB) and return its folder; pass it to :func:`sc09_files` for the SC09 subset."""
    import torchaudio.datasets

    Path(root).mkdir(parents=True, exist_ok=True)
    torchaudio.datasets.SPEECHCOMMANDS(os.fspath(root), download=True)
    return Path(root) / "SpeechCommands" / "speech_commands_v0.02"
