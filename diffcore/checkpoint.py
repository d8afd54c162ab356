"""Self-describing checkpoints: atomic writes, ``weights_only`` loading, keep-last-K, a ``latest`` pointer, export.

A checkpoint is one ``torch.save`` dict (see ``docs/DESIGN.md``)::

    {"format": 1, "step": int, "model": state_dict, "ema": EMA.state_dict() | None, "optimizer": ...,
     "scaler": ... | None, "rng": ..., "data": {"epoch": int, "samples": int}, "config": resolved recipe (dict),
     "train": TrainConfig.to_dict(), "world_size": int}

Everything in it is a tensor or plain Python data, so it loads with ``torch.load(weights_only=True)``; nothing is
ever unpickled. A run folder keeps its checkpoints as ``RUN/checkpoints/step_XXXXXXXX.pt`` plus a text file
``RUN/checkpoints/latest`` naming the newest one.

Atomicity (:func:`diffcore.atomic.atomic_write`, re-exported here): a file is written to a temporary name in the
same folder, flushed and fsync'ed, renamed over the final name with ``os.replace`` (atomic on POSIX), and the
folder is fsync'ed so the rename survives a power cut. A process killed at any point leaves the previous checkpoint
and pointer untouched (at worst a stray ``.*.tmp*`` file, removed by :func:`remove_stale_temp_files`). A failed
write (e.g. ``OSError`` disk full) removes its temporary file and raises :class:`CheckpointError`; the previous
checkpoint stays valid.

An export is a folder with ``config.json`` (the resolved recipe) and ``model.safetensors`` (EMA weights, or the
plain weights of a run without EMA); it loads with ``json`` + ``safetensors`` alone, without the training code.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from diffcore.atomic import atomic_write
from diffcore.errors import CheckpointError, ConfigError

__all__ = [
    "FORMAT_VERSION",
    "rebuild_model",
    "warm_start_weights",
    "CheckpointError",
    "atomic_write",
    "save_checkpoint",
    "load_checkpoint",
    "find_latest",
    "list_checkpoints",
    "remove_stale_temp_files",
    "load_for_inference",
    "export",
    "write_export",
    "checkpoint_name",
    "load_error_detail",
    "is_run_folder",
    "check_export_target",
    "check_replaced_export",
    "first_shape_mismatch",
    "weights_misfit",
    "weights_problem",
    "expected_state",
]

FORMAT_VERSION = 1
LATEST = "latest"
CKPT_DIR = "checkpoints"
EXPORT_CONFIG = "config.json"
EXPORT_WEIGHTS = "model.safetensors"
_NAME_RE = re.compile(r"^step_(\d+)\.pt$")


#: Sentences of torch's weights-only error that give advice (often: turn the protection off) rather than the cause.
_ADVICE_WORDS = ("Weights only load failed", "weights_only", "trust", "Check the documentation", "Please file an issue",
                 "allowlist", "Alternatively", "arbitrary code", "you have two options")


def load_error_detail(error: BaseException) -> tuple[bool, str]:
    """Why ``torch.load(..., weights_only=True)`` failed, as ``(refused, one line)``: ``refused`` when the file holds
    a pickled class or function the weights-only unpickler will not build (loading it could run code), and the
    cause without torch's advice to reload with ``weights_only=False``, which a file of unknown origin must never
    get."""
    text = " ".join(str(error).split())
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = text.split("Check the documentation")[0]
    kept = [t for t in re.split(r"(?<=\.)\s+", text) if t and not any(w in t for w in _ADVICE_WORDS)]
    detail = " ".join(kept[:2]).strip()
    refused = "unsupported global" in str(error).lower()
    if not detail:
        return refused, "refused by the weights-only loader" if refused else type(error).__name__
    return refused, detail if refused else f"{type(error).__name__}: {detail}"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def _ckpt_dir(run_or_ckpt_dir: Path) -> Path:
    return run_or_ckpt_dir / CKPT_DIR if (run_or_ckpt_dir / CKPT_DIR).is_dir() else run_or_ckpt_dir


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step_*.pt`` in a checkpoint folder (or a run folder), oldest first."""
    folder = _ckpt_dir(Path(ckpt_dir))
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def remove_stale_temp_files(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by writes that were killed (``.NAME.XXXX.tmp``). Returns what was removed."""
    folder = Path(ckpt_dir)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed


def save_checkpoint(state: Mapping[str, Any], ckpt_dir: str | os.PathLike, step: int, keep_last: int = 3) -> Path:
    """Write ``state`` as ``ckpt_dir/step_XXXXXXXX.pt`` atomically, point ``latest`` at it, then delete all but
    the ``keep_last`` newest checkpoints. Raises :class:`CheckpointError` if the write fails (the previous
    checkpoint and pointer are then unchanged)."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    folder = Path(ckpt_dir)
    path = folder / checkpoint_name(step)
    atomic_write(path, lambda f: torch.save(dict(state), f))
    atomic_write(folder / LATEST, lambda f: f.write((path.name + "\n").encode()))
    for _, old in list_checkpoints(folder)[:-keep_last]:
        if old != path:
            try:
                old.unlink()
            except OSError:
                pass
    return path


def find_latest(run_or_ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run folder (or its ``checkpoints`` folder): the one ``latest`` names, or, if the
    pointer is missing or dangling, the highest ``step_*.pt``; ``None`` if there is none."""
    folder = _ckpt_dir(Path(run_or_ckpt_dir))
    pointer = folder / LATEST
    if pointer.is_file():
        try:  # a damaged pointer (binary junk, a path, a huge file) falls back to the newest step_*.pt
            with open(pointer, "rb") as f:
                name = f.read(256).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if name and _NAME_RE.match(name) and (folder / name).is_file():
            return folder / name
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True`` and check that it is one of ours.

    Raises :class:`CheckpointError` naming the file for a missing, truncated or corrupt file, a file whose records
    claim more than it holds (:func:`diffcore.torchfile.check_torch_file`, checked before anything is allocated), a
    file holding objects that weights-only loading refuses, a file that is not a diffstack checkpoint, or a newer
    format.
    """
    path = Path(path)
    if not path.is_file():
        from diffcore.paths import not_a_file_reason

        reason = not_a_file_reason(path)
        raise CheckpointError(f"{path}: no such checkpoint file" if reason == "does not exist" else f"{path}: {reason}")
    from diffcore.torchfile import TorchFileError, check_torch_file

    try:  # before torch.load allocates what the records claim: a small forged file can claim gigabytes
        check_torch_file(path)
    except TorchFileError as e:
        raise CheckpointError(str(e)) from None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        refused, detail = load_error_detail(e)
        if refused:
            problem = f"holds objects that weights-only loading refuses, since loading them could run code ({detail})"
        else:
            problem = f"is truncated, corrupt or not a torch file ({detail})"
        raise CheckpointError(f"{path}: {problem}") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path}: not a diffstack checkpoint (no 'format' entry)")
    if not isinstance(state["format"], int) or state["format"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state['format']!r} is newer than this version of diffstack reads "
            f"({FORMAT_VERSION}); upgrade diffstack"
        )
    for key in ("model", "config", "step"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    return state


def _weights_of(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    ema = state.get("ema")
    if ema:
        return dict(ema["shadow"]), "ema"
    return dict(state["model"]), "model"


def _resolve(path: Path) -> tuple[str, Path]:
    """Classify a path as ("export", folder), ("checkpoint", file)."""
    if path.is_dir():
        if (path / EXPORT_WEIGHTS).is_file() and (path / EXPORT_CONFIG).is_file():
            return "export", path
        latest = find_latest(path)
        if latest is None:
            raise CheckpointError(
                f"{path}: neither a run folder with checkpoints nor an export folder "
                f"({EXPORT_CONFIG} + {EXPORT_WEIGHTS})"
            )
        return "checkpoint", latest
    if path.is_file():
        return "checkpoint", path
    from diffcore.paths import not_a_file_reason

    reason = not_a_file_reason(path)
    if reason != "does not exist":  # a FIFO, a device or a socket: say so, not "no such file"
        raise CheckpointError(f"{path}: {reason}; a model is a run folder, a checkpoint file or an export folder")
    raise CheckpointError(f"{path}: no such file or folder")


#: Largest ``config.json`` an export may hold (a real one is a few kB).
MAX_EXPORT_CONFIG_BYTES = 1 << 20


def _read_export_config(path: Path) -> dict[str, Any]:
    """An export's ``config.json`` as a dict with a ``model`` mapping; :class:`CheckpointError` naming the file for
    anything else (not JSON, a list or null, nesting deep enough to overflow the parser, a huge file)."""
    try:
        if path.stat().st_size > MAX_EXPORT_CONFIG_BYTES:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes is far too large for a model config "
                                  f"(limit {MAX_EXPORT_CONFIG_BYTES})")
        config = json.loads(path.read_text(encoding="utf-8"))
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be a model config") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {' '.join(str(e).split())})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: holds {type(config).__name__ if config is not None else 'null'}, not the "
                              "mapping of a model config")
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: has no 'model' mapping, so the model cannot be rebuilt")
    return config


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run folder (one with a ``checkpoints`` folder, or a ``config.yaml`` beside a
    ``log.jsonl``) or one of its direct subfolders."""
    p = Path(path).resolve()
    for folder in (p, p.parent):
        if (folder / CKPT_DIR).is_dir() or ((folder / "config.yaml").is_file() and (folder / "log.jsonl").is_file()):
            return True
    return False


def load_for_inference(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, state_dict)`` for inference from a run folder (its latest checkpoint), a ``.pt`` checkpoint
    or an export folder. The weights are the EMA ones when the checkpoint has them, the plain ones otherwise.
    The config is the resolved recipe the model was trained with: rebuild the model from ``config["model"]``."""
    kind, where = _resolve(Path(path))
    if kind == "export":
        from safetensors.torch import load_file

        config = _read_export_config(where / EXPORT_CONFIG)
        try:
            weights = load_file(str(where / EXPORT_WEIGHTS))
        except Exception as e:
            raise CheckpointError(f"{where / EXPORT_WEIGHTS}: unreadable ({type(e).__name__}: {e})") from None
        return config, weights
    state = load_checkpoint(where)
    weights, _ = _weights_of(state)
    return dict(state["config"]), weights


def write_export(out_dir: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], *,
                 dtype: torch.dtype | None = None, metadata: Mapping[str, str] | None = None) -> Path:
    """The one writer of the export format: ``out_dir/model.safetensors`` (``state_dict`` on the CPU, floating
    tensors cast to ``dtype`` when given; safetensors metadata ``format`` then ``metadata``) and
    ``out_dir/config.json`` (``config`` as indented JSON), each atomically. Raises ``TypeError`` before writing
    anything when ``config`` is not JSON-able."""
    from safetensors.torch import save

    text = json.dumps(dict(config) if isinstance(config, Mapping) else config, indent=2, sort_keys=False)
    check_replaced_export(out_dir, config)
    # safetensors wants contiguous tensors that share no storage (tied weights are written twice).
    tensors = {k: v.detach().to("cpu", dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
               .contiguous().clone() for k, v in state_dict.items()}
    blob = save(tensors, metadata={"format": f"diffstack-export-{FORMAT_VERSION}", **dict(metadata or {})})
    out = Path(out_dir)
    atomic_write(out / EXPORT_WEIGHTS, lambda f: f.write(blob))
    atomic_write(out / EXPORT_CONFIG, lambda f: f.write((text + "\n").encode()))
    return out


def export(checkpoint_or_run: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/config.json`` + ``out_dir/model.safetensors`` (EMA weights preferred) from a checkpoint
    or a run folder (:func:`write_export`). The safetensors metadata records ``step``, ``source`` (``ema``/``model``)
    and the format."""
    kind, where = _resolve(Path(checkpoint_or_run))
    if kind == "export":
        raise CheckpointError(f"{where}: already an export folder")
    check_export_target(out_dir)
    state = load_checkpoint(where)
    weights, source = _weights_of(state)
    meta = {"step": str(int(state["step"])), "source": source}
    try:
        return write_export(out_dir, weights, state["config"], metadata=meta)
    except TypeError as e:
        raise CheckpointError(f"{where}: its config is not JSON-able ({e})") from None


def check_export_target(out_dir: str | os.PathLike) -> None:
    """Refuse to export into a run folder (later loads of the run would pick the export over newer checkpoints),
    into a file, or into a folder that holds other files than an export's."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: is a file; an export is a folder")
    if is_run_folder(out):
        raise CheckpointError(f"{out}: is a training run folder (or inside one); export to a folder of its own")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in (EXPORT_CONFIG, EXPORT_WEIGHTS))
        if others:
            raise CheckpointError(f"{out}: already holds other files ({', '.join(others[:3])}"
                                  f"{', ...' if len(others) > 3 else ''}); export to an empty or new folder")


def check_replaced_export(out_dir: str | os.PathLike, config: Any) -> None:
    """Refuse to write an export over an earlier export of another kind of model (``diffwave export`` over a
    diffimage export replaced it without a word) or over a ``config.json``/``model.safetensors`` that is not an
    export. Kinds are compared by the fields of their ``model`` sections: a new export of the same kind of model
    (a later checkpoint, another size) replaces the earlier one, as before."""
    out = Path(out_dir)
    old_config, old_weights = out / EXPORT_CONFIG, out / EXPORT_WEIGHTS
    if not old_config.exists() and not old_weights.exists():
        return
    if not old_config.is_file():
        raise CheckpointError(f"{out}: holds {EXPORT_WEIGHTS} without an export's {EXPORT_CONFIG}; it is not an "
                              "earlier export, so it is not replaced: export to an empty or new folder")
    try:
        old = _read_export_config(old_config)
    except CheckpointError as e:
        raise CheckpointError(f"{out}: its {EXPORT_CONFIG} is not an export's ({e}), so it is not replaced: export "
                              "to an empty or new folder") from None
    new_model = config.get("model") if isinstance(config, Mapping) else None
    if not isinstance(new_model, Mapping):
        return
    a, b = set(old["model"]), set(new_model)
    if len(a & b) <= len(a ^ b):
        raise CheckpointError(f"{out}: holds an export of another kind of model (its model config has "
                              f"{', '.join(sorted(a - b)[:3])}, ...); it is not replaced: export to an empty or "
                              "new folder")


def first_shape_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, Any]) -> str | None:
    """A one-line description of the first key whose value is not a tensor of the expected shape, or ``None``."""
    for key, value in given.items():
        if key not in expected:
            continue
        if not isinstance(value, torch.Tensor):
            return f"{key} is a {type(value).__name__}, not a tensor"
        if tuple(value.shape) != tuple(expected[key].shape):
            return f"{key} has shape {list(value.shape)}, the model needs {list(expected[key].shape)}"
    return None


def expected_state(model_cls: Callable[[Any], torch.nn.Module], model_config: Any) -> dict[str, torch.Tensor] | None:
    """The state dict (shapes only, on the ``meta`` device: nothing allocated) that ``model_cls(model_config)``
    has, or ``None`` when the constructor cannot run on the meta device."""
    try:
        with torch.device("meta"):
            return model_cls(model_config).state_dict()
    except Exception:
        return None


def weights_misfit(model_cls: Callable[[Any], torch.nn.Module], model_config: Any,
                   weights: Mapping[str, Any]) -> str | None:
    """Why ``weights`` cannot be the state of ``model_cls(model_config)`` (the first key missing, or of another
    shape), or ``None``. The model is built on the ``meta`` device, which allocates nothing, so a config that asks
    for a huge network whose weights are not there is refused without the memory or minutes it would take."""
    expected = expected_state(model_cls, model_config)
    if expected is None:  # a constructor that needs real data: the real load_state_dict will judge
        return None
    mismatch = first_shape_mismatch(expected, weights)
    if mismatch:
        return mismatch
    missing = [k for k in expected if k not in weights]
    if missing:
        return f"{len(missing)} tensor(s) missing, first {missing[0]} of shape {list(expected[missing[0]].shape)}"
    return None


def weights_problem(weights: Mapping[str, Any], expected: Mapping[str, torch.Tensor] | None = None) -> str | None:
    """Why ``weights`` would silently give wrong results, or ``None``: a tensor that is not a dense floating-point
    tensor where the model holds floating-point values (an ``int8`` or ``bool`` tensor loads into a float
    parameter without a word and gives full-scale noise), or a tensor with NaN/Inf values (an all-black grid, NaN
    audio). ``expected``: the model's own state (on the meta device), whose non-float buffers may be integers."""
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            return f"{key} is a {type(value).__name__}, not a tensor"
        if value.layout != torch.strided or value.is_meta:
            return f"{key} is a {'meta' if value.is_meta else str(value.layout).replace('torch.', '')} tensor"
        needs_float = expected is None or key not in expected or expected[key].is_floating_point()
        if needs_float and not value.is_floating_point():
            return f"{key} has dtype {str(value.dtype).replace('torch.', '')}; the model's weights are floating point"
        if value.is_floating_point() and value.numel():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                return f"{key} holds {int((~finite).sum())} non-finite values (NaN or Inf)"
    return None


def rebuild_model(
    config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    config_cls: Any,
    model_cls: Callable[[Any], torch.nn.Module],
    *,
    source: str = "<memory>",
    kind: str = "model",
) -> torch.nn.Module:
    """The model a stored recipe describes, with ``weights`` loaded: ``model_cls(config_cls.from_dict(config["model"]))``.

    Inference always rebuilds from the stored config, never from defaults. Raises :class:`CheckpointError` naming
    ``source`` when the config has no ``model`` section, is not a ``kind`` config, or the weights do not fit it.
    """
    if not isinstance(config.get("model"), Mapping):
        raise CheckpointError(f"{source}: its config has no 'model' section, so the model cannot be rebuilt")
    try:
        model_config = config_cls.from_dict(config["model"])
    except ConfigError as e:
        raise CheckpointError(f"{source}: its model config is not a {kind} config ({e})") from None
    problem = weights_misfit(model_cls, model_config, weights)
    if problem:  # found on the meta device, before a model of the config's size is allocated
        raise CheckpointError(f"{source}: the weights do not fit the stored model config ({problem})")
    problem = weights_problem(weights, expected_state(model_cls, model_config))
    if problem:
        raise CheckpointError(f"{source}: damaged weights: {problem}")
    model = model_cls(model_config)
    try:
        model.load_state_dict(dict(weights))
    except RuntimeError as e:
        first = " ".join(str(e).strip().splitlines()[:3])
        raise CheckpointError(f"{source}: the weights do not fit the stored model config ({first})") from None
    return model


def warm_start_weights(path: str | os.PathLike, config_cls: Any, model_config: Any, *, kind: str = "model",
                       source: str | None = None,
                       adapt: Callable[[Any, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None] | None = None,
                       ) -> dict[str, torch.Tensor]:
    """The float32 weights (EMA ones where stored) of the export, checkpoint or run folder ``path``, for a new run
    of ``model_config`` to start from (a warm start: the weights only, with a fresh optimizer and step 0).

    ``adapt(stored_config, weights)``: called when the stored model section is a valid ``config_cls`` that differs
    from ``model_config``; it returns weights for ``model_config`` made exactly from the stored ones (for instance
    a conditional U-Net's null-label branch as an unconditional one), or ``None`` when it cannot.

    Raises :class:`~diffcore.config.ConfigError` naming ``source`` (default: ``path``) when the stored model
    section is not a ``config_cls`` equal to ``model_config`` (and ``adapt`` cannot bridge them: a warm start needs
    the same network), and :class:`CheckpointError` when the weights are damaged."""
    where = source if source is not None else str(path)
    config, weights = load_for_inference(path)
    stored = config.get("model")
    if not isinstance(stored, Mapping):
        raise ConfigError(f"init_from {where!r}: {path} has no 'model' section, so it holds no {kind}")
    try:
        stored_config = config_cls.from_dict(stored)
    except ConfigError as e:
        raise ConfigError(f"init_from {where!r}: {path} holds no {kind} ({e})") from None
    problem = weights_problem(weights)
    if problem:
        raise CheckpointError(f"init_from {where!r}: damaged weights: {problem}")
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    if stored_config != model_config:
        adapted = adapt(stored_config, weights) if adapt is not None else None
        if adapted is None:
            raise ConfigError(f"init_from {where!r}: its model section differs from this recipe's; a warm start "
                              f"needs the same network")
        weights = adapted
    return weights
