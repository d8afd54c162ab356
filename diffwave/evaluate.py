"""Evaluation of a trained DiffWave: resynthesis metrics of a vocoder (beside Griffin-Lim on the same mels) and the
DiffWave paper's generation metrics (FID, IS, mIS, AM, NDB with a digit classifier) of an unconditional model.

Each function vocodes or generates through :mod:`diffwave.sample`, scores with :mod:`diffwave.metrics` /
:mod:`diffwave.digits`, and writes its audio, a Markdown table and a JSON file (atomically) into an output folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from diffcore.atomic import atomic_write, write_json
from diffcore.config import ConfigError
from diffwave.refiner import GriffinLimRefiner
from diffwave.sample import Inference, Steps, num_sampling_steps, vocode_mels

if TYPE_CHECKING:
    from diffwave.api import Vocoder

__all__ = ["evaluate_resynthesis_files", "evaluate_generation", "heldout_files"]


def heldout_files(info: dict) -> list[Path]:
    """The held-out clips of the recipe stored with a model (its ``data`` section with ``data.holdout``), or ``[]``
    when it names none or its data is not reachable from here."""
    from diffwave.data import split_files
    from diffwave.recipe import DataConfig

    data = info.get("data")
    if not isinstance(data, dict) or not data.get("path") or not data.get("holdout"):
        return []
    try:
        return split_files(DataConfig.from_dict(data))[1]
    except (ConfigError, FileNotFoundError, OSError):
        return []




def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"not JSON-able: {type(x).__name__}")


def evaluate_resynthesis_files(
    vocoder: Vocoder,
    files: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    steps: Steps = "fast",
    *,
    seed: int = 0,
    max_seconds: float | None = None,
    with_dnsmos: bool = True,
    gl_iters: int = 64,
    plot_clips: int = 2,
    group: int = 8,
    progress: bool = True,
    inference: Inference = None,
) -> dict[str, Any]:
    """Resynthesis of recordings: vocode each file's own mel (the model's preset) and invert the same mel with
    Griffin-Lim, then compare both with the recording (:func:`diffwave.metrics.evaluate_resynthesis`).

    Writes ``out_dir/wavs/<stem>.{reference,diffwave,griffinlim}.wav``, ``metrics.md`` (the table),
    ``metrics.json`` (means, counts, per-clip values, settings) and ``spectrograms.png`` (recording, DiffWave and
    Griffin-Lim of the first ``plot_clips`` clips). ``max_seconds`` keeps only the start of long recordings.
    Returns ``{"table": ResynthesisTable, "per_clip": [...], "paths": {...}}``.
    """
    from tqdm.auto import tqdm

    from diffwave.audio import load_audio, save_audio
    from diffwave.metrics import evaluate_pair, evaluate_resynthesis, griffin_lim_from_mel, plot_spectrograms

    if not vocoder.conditional:
        raise ValueError("resynthesis needs a mel-conditioned model; use evaluate_generation for unconditional ones")
    if not files:
        raise ValueError("no recordings to evaluate")
    out = Path(out_dir)
    sr, mel_cfg = vocoder.sample_rate, vocoder.config.mel
    refs, mels, names = [], [], []
    for f in files:
        wav, _ = load_audio(f, sr)
        wav = wav.clamp(-1.0, 1.0)
        if max_seconds is not None:
            wav = wav[: int(max_seconds * sr)]
        refs.append(wav)
        mels.append(vocoder.mel(wav))
        names.append(Path(f).stem)
    refiner = isinstance(vocoder.model, GriffinLimRefiner)
    model_kind = "refiner" if refiner else "diffwave"
    outs: list[Tensor] = []
    if refiner:  # deterministic, one network call per mel: no schedule, no noise
        n_steps = 1
        for m, r in zip(tqdm(mels, disable=not progress, desc="vocode (refiner)"), refs):
            outs.append(vocoder.vocode(m)[: r.shape[-1]])
    else:
        n_steps = num_sampling_steps(vocoder.config, steps)
        # each mel its own run, its noise from the seed and that mel alone (diffwave.sample.input_seed), as
        # ``diffwave vocode --seed`` does: a clip's score does not depend on the other clips evaluated with it
        bar = tqdm(total=n_steps * len(files), disable=not progress, desc=f"vocode ({steps})")
        for i in range(0, len(files), group):
            part = vocode_mels(vocoder.model, mels[i : i + group], steps, seed=seed,
                               callback=lambda *_: bar.update(1), inference=inference)
            outs += [w.cpu()[: r.shape[-1]] for w, r in zip(part, refs[i : i + group])]
        bar.close()
    gls = [griffin_lim_from_mel(m, mel_cfg, n_iter=gl_iters) for m in mels]
    paths: dict[str, Any] = {"wavs": []}
    for name, ref, est, gl in zip(names, refs, outs, gls):
        for kind, wav in (("reference", ref), (model_kind, est), ("griffinlim", gl)):
            paths["wavs"].append(save_audio(out / "wavs" / f"{name}.{kind}.wav", wav, sr))
    system = f"Refiner (Griffin-Lim {vocoder.config.gl_iters} it. + network)" if refiner else f"DiffWave ({steps})"
    table = evaluate_resynthesis(list(zip(refs, outs)), sr, list(zip(refs, gls)), system=system,
                                 with_dnsmos=with_dnsmos)
    per_clip = [
        {"clip": name, model_kind: evaluate_pair(r, e, sr, with_dnsmos=False),
         "griffinlim": evaluate_pair(r, g_, sr, with_dnsmos=False)}
        for name, r, e, g_ in zip(names, refs, outs, gls)
    ]
    items = []
    for name, ref, est, gl in list(zip(names, refs, outs, gls))[:plot_clips]:
        items += [(f"{name}: recording", ref), (f"{name}: {system}", est), (f"{name}: Griffin-Lim ({gl_iters} it.)", gl)]
    paths["png"] = plot_spectrograms(out / "spectrograms.png", items, sr)
    header = (f"# Resynthesis of {len(files)} recording(s)\n\nmodel: `{vocoder.source}` ({vocoder.config.mel.preset} "
              f"mel, {sr} Hz); sampling: {steps} ({n_steps} steps); baseline: Griffin-Lim, {gl_iters} iterations, "
              f"on the same mels.\n\n")
    paths["markdown"] = out / "metrics.md"
    atomic_write(paths["markdown"], lambda f: f.write((header + table.markdown()).encode()))
    paths["json"] = out / "metrics.json"
    write_json(paths["json"], {"model": vocoder.source, "steps": steps, "sample_rate": sr,
                               "files": [str(f) for f in files], **table.to_dict(), "per_clip": per_clip},
               indent=2, default=_jsonable)
    return {"table": table, "per_clip": per_clip, "paths": paths}


def evaluate_generation(
    vocoder: Vocoder,
    reference_files: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    n: int = 64,
    steps: Steps = "fast",
    *,
    seed: int = 0,
    batch_size: int = 16,
    classifier: str | os.PathLike | None = None,
    classifier_epochs: int = 30,
    save_clips: int = 10,
    inference: Inference = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The DiffWave paper's Table 2 metrics (FID, IS, mIS, AM, NDB) of ``n`` generated clips against
    ``reference_files`` (spoken digits named ``{digit}_{speaker}_{index}.wav``, e.g. FSDD's training part), judged
    by a digit classifier: ``classifier`` (a checkpoint of :func:`diffwave.digits.train_digit_classifier`), or one
    trained here on the reference clips (saved as ``out_dir/digit_classifier.pt``).

    Writes ``metrics.json``, ``metrics.md`` and the first ``save_clips`` clips under ``out_dir/generated``.
    """
    from tqdm.auto import tqdm

    from diffwave.audio import AudioError, load_audio, save_audio
    from diffwave.digits import digit_metrics, load_digit_classifier, split_fsdd_files, train_digit_classifier

    if vocoder.conditional:
        raise ValueError("generation metrics need an unconditional model; use evaluate_resynthesis_files")
    out = Path(out_dir)
    if classifier is not None:
        clf = load_digit_classifier(classifier)
        clf_path = Path(classifier)
    else:
        try:
            train, val = split_fsdd_files(reference_files)
        except ValueError as e:
            raise ConfigError(f"the reference clips must be spoken digits named {{digit}}_{{speaker}}_{{index}}.wav "
                              f"to train the digit classifier, or give a trained classifier ({e})") from None
        if not train:  # every clip has a validation index: train on them all
            train, val = val, []
        clf_path = out / "digit_classifier.pt"
        clf, hist = train_digit_classifier(train, clf_path, classifier_epochs, val_files=val or None)
    refs = []
    for f in reference_files:
        try:
            refs.append(load_audio(f, vocoder.sample_rate, log_resample=False)[0])  # the rate of the clips
        except AudioError:
            continue
    clips: list[Tensor] = []
    bar = tqdm(total=n, disable=not progress, desc=f"generate ({steps})")
    for k, i in enumerate(range(0, n, batch_size)):
        g = torch.Generator(device=vocoder.device).manual_seed(seed + i)
        clips += list(vocoder.generate(min(batch_size, n - i), generator=g, steps=steps, inference=inference))
        bar.update(min(batch_size, n - i))
    bar.close()
    for i, c in enumerate(clips[:save_clips]):
        save_audio(out / "generated" / f"sample_{i:04d}.wav", c, vocoder.sample_rate)
    metrics = digit_metrics(clips, refs, clf, sr=vocoder.sample_rate)
    rows = [("FID", "fid", "lower"), ("IS", "is", "higher"), ("mIS", "mis", "higher"), ("AM", "am", "lower"),
            ("NDB/K", "ndb_k", "lower")]
    md = ["| metric | generated | better |", "|---|---:|---|"] + [f"| {a} | {metrics[k]:.3f} | {b} |" for a, k, b in rows]
    md.append(f"| IS of the reference clips | {metrics['reference_is']:.3f} | |")
    text = (f"# Unconditional generation: {n} clips, {steps} sampling\n\nmodel: `{vocoder.source}`; classifier: "
            f"`{clf_path}`; reference: {len(refs)} clips\n\n" + "\n".join(md) + "\n")
    atomic_write(out / "metrics.md", lambda f: f.write(text.encode()))
    write_json(out / "metrics.json", {"model": vocoder.source, "steps": steps, "n": n, "classifier": str(clf_path),
                                       **metrics}, indent=2, default=_jsonable)
    return {"metrics": metrics, "paths": {"markdown": out / "metrics.md", "json": out / "metrics.json",
                                          "classifier": clf_path}}
