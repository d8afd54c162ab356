"""Security: nothing unpickles untrusted data, and file lists cannot reach outside their dataset.

- A source scan (AST, not regular expressions): every ``torch.load`` passes ``weights_only=True``, every ``np.load``
  ``allow_pickle=False``, YAML is read with ``safe_load``, and nothing calls ``pickle``/``marshal``/``dill`` loaders.
- A malicious checkpoint (its unpickling would run ``os.system``) is refused by every loader, and the command it
  carries never runs (its marker file never appears).
- File-list entries that resolve outside the list's folder (``..``, absolute paths, symlinks) are refused unless
  the caller allows it.
"""

import ast
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from diffcore.checkpoint import CheckpointError, load_checkpoint, load_for_inference, save_checkpoint
from diffwave.audio import AudioError, list_audio_files
from diffwave.lmnt import LmntImportError, load_lmnt_checkpoint, read_lmnt_checkpoint
from diffwave.mel import MelError, load_mel_file

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("diffcore", "diffwave", "diffimage")


# ------------------------------------------------------------------------------------------------ source scan


def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    files += sorted((REPO / "tools").glob("*.py")) if (REPO / "tools").is_dir() else []
    assert len(files) > 20
    return files


def _dotted(node: ast.AST) -> str:
    """``torch.serialization.load`` for the function of a call (empty when it is not a plain dotted name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    aliases: dict[str, str] = {}  # `from torch import load as tl` → tl: torch.load
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            head, _, rest = name.partition(".")
            full = aliases.get(head, head) + (f".{rest}" if rest else "")
            yield node, full.replace("numpy.", "np.", 1) if full.startswith("numpy.") else full


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<not a constant>"
    return None


def test_every_torch_load_is_weights_only_and_every_np_load_refuses_pickles():
    problems, seen = [], {"torch.load": 0, "np.load": 0}
    for path in _sources():
        rel = path.relative_to(REPO)
        for call, name in _calls(path):
            where = f"{rel}:{call.lineno} {name}"
            if name in ("torch.load", "torch.serialization.load"):
                seen["torch.load"] += 1
                if _keyword(call, "weights_only") is not True:
                    problems.append(f"{where} without weights_only=True")
            elif name == "np.load":
                seen["np.load"] += 1
                if _keyword(call, "allow_pickle") is not False:
                    problems.append(f"{where} without allow_pickle=False")
            elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                problems.append(f"{where}: use yaml.safe_load")
            elif name.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve", "joblib") and (
                name.endswith((".load", ".loads", ".Unpickler", ".open"))
            ):
                problems.append(f"{where} unpickles")
            elif name in ("eval", "exec"):
                problems.append(f"{where} evaluates code")
            elif name == "torch.jit.load" and rel.as_posix() != "diffimage/fid.py":
                # TorchScript runs code from the file; only the pinned FID Inception network (SHA-1 known) may
                problems.append(f"{where}: TorchScript outside the FID network")
    assert problems == []
    assert seen["torch.load"] >= 3 and seen["np.load"] >= 3  # the scan does see the loaders


def test_the_scan_itself_flags_unsafe_calls(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch, numpy\nfrom pickle import loads as l\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\nnumpy.load('y')\nl(b'')\n"
    )
    calls = [(name, _keyword(c, "weights_only"), _keyword(c, "allow_pickle")) for c, name in _calls(bad)]
    assert ("torch.load", None, None) in calls and ("torch.load", False, None) in calls
    assert ("np.load", None, None) in calls and ("pickle.loads", None, None) in calls


# ------------------------------------------------------------------------------------------------ malicious files


class Evil:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a loader ran the code in a malicious file"


def _evil_checkpoint(path: Path, marker: Path, **extra) -> Path:
    state = {"format": 1, "step": 1, "model": {"w": torch.zeros(2)}, "config": {"model": {}}, "evil": Evil(marker)}
    state.update(extra)
    torch.save(state, path)
    return path


def _legacy_pickle(path: Path, marker: Path) -> Path:
    """A plain (non-zip) pickle, the format of torch < 1.6 files."""
    path.write_bytes(pickle.dumps({"format": 1, "model": Evil(marker)}, protocol=2))
    return path


def test_the_malicious_file_really_runs_code_when_unpickled_unrestricted(tmp_path):
    """A control: the payload is live (so that the refusals below mean something)."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Evil(marker)))
    assert marker.exists()


def test_checkpoint_loaders_refuse_a_malicious_pickle(tmp_path, marker):
    for path in (_evil_checkpoint(tmp_path / "evil.pt", marker), _legacy_pickle(tmp_path / "old.pt", marker)):
        with pytest.raises(CheckpointError, match=rf"{path.name}.*(refuses|corrupt)"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match=path.name):
            load_for_inference(path)


def test_a_run_folder_whose_latest_checkpoint_is_malicious_is_refused(tmp_path, marker):
    run = tmp_path / "run"
    save_checkpoint({"format": 1, "step": 1, "model": {"w": torch.zeros(2)}, "config": {}}, run / "checkpoints", 1)
    _evil_checkpoint(run / "checkpoints" / "step_00000002.pt", marker)
    (run / "checkpoints" / "latest").write_text("step_00000002.pt\n")
    with pytest.raises(CheckpointError, match="step_00000002.pt.*refuses"):
        load_for_inference(run)


def test_an_export_folder_is_read_without_pickle(tmp_path, marker):
    """An export is JSON + safetensors: a pickle disguised as model.safetensors is just an unreadable file."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text('{"model": {}}')
    _evil_checkpoint(folder / "model.safetensors", marker)
    with pytest.raises(CheckpointError, match="model.safetensors.*unreadable"):
        load_for_inference(folder)


def test_lmnt_loader_refuses_a_malicious_pickle(tmp_path, marker):
    for path in (_evil_checkpoint(tmp_path / "weights.pt", marker, params={}),
                 _legacy_pickle(tmp_path / "old.pt", marker)):
        with pytest.raises(LmntImportError, match=path.name):
            read_lmnt_checkpoint(path)
        with pytest.raises(LmntImportError, match=path.name):
            load_lmnt_checkpoint(path)


def test_lmnt_attrdict_allowance_does_not_open_a_door(tmp_path, marker):
    """lmnt's AttrDict is the one extra name the lmnt loader accepts: a pickle that names it but nests a code
    call inside is still refused, and attributes set on it cannot shadow the dict's items."""
    # GLOBAL diffwave.params AttrDict ; EMPTY_TUPLE ; NEWOBJ ; then its items: {'model': <os.system call>}
    payload = pickle.dumps(Evil(marker), protocol=2)[2:-1]  # the inner REDUCE of os.system, without PROTO/STOP
    blob = (b"\x80\x02}q\x00(X\x05\x00\x00\x00modelq\x01}X\x06\x00\x00\x00paramsq\x02"
            b"cdiffwave.params\nAttrDict\nq\x03)\x81q\x04X\x04\x00\x00\x00evilq\x05" + payload + b"su.")
    (tmp_path / "attr.pt").write_bytes(blob)
    with pytest.raises(LmntImportError, match="attr.pt.*(refused|Unsupported global)"):
        read_lmnt_checkpoint(tmp_path / "attr.pt")


def test_mel_loader_refuses_pickles_in_pt_and_npy_files(tmp_path, marker):
    _evil_checkpoint(tmp_path / "mel.pt", marker)
    with pytest.raises(MelError, match="mel.pt"):
        load_mel_file(tmp_path / "mel.pt")
    torch.save({"mel": torch.rand(80, 10), "x": Evil(marker)}, tmp_path / "mel2.pt")
    with pytest.raises(MelError, match="mel2.pt"):
        load_mel_file(tmp_path / "mel2.pt")
    np.save(tmp_path / "mel.npy", np.array([Evil(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(MelError, match=r"mel\.npy.*(pickle|Object arrays)"):
        load_mel_file(tmp_path / "mel.npy")


def test_digit_classifier_loader_refuses_a_malicious_pickle(tmp_path, marker):
    from diffwave.digits import load_digit_classifier

    path = _evil_checkpoint(tmp_path / "classifier.pt", marker, kind="digit-classifier")
    with pytest.raises(CheckpointError, match="classifier.pt"):
        load_digit_classifier(path)


def test_diffwave_model_loader_refuses_a_malicious_pickle(tmp_path, marker):
    from diffwave import api

    path = _evil_checkpoint(tmp_path / "model.pt", marker, params={})
    with pytest.raises((CheckpointError, LmntImportError), match="model.pt"):
        api.load(path, device="cpu")


def test_diffimage_model_loader_refuses_a_malicious_pickle(tmp_path, marker):
    from diffimage.api import load

    path = _evil_checkpoint(tmp_path / "unet.pt", marker)
    with pytest.raises(CheckpointError, match="unet.pt"):
        load(path)


def test_image_arrays_refuse_pickled_objects(tmp_path, marker):
    from diffimage.data import NpzImageDataset
    from diffimage.fid import FeatureStats

    np.savez(tmp_path / "images.npz", images=np.array([Evil(marker)], dtype=object))
    with pytest.raises(ValueError, match="images.npz"):
        NpzImageDataset(tmp_path / "images.npz")
    np.savez(tmp_path / "stats.npz", mu=np.array([Evil(marker)], dtype=object), sigma=np.eye(2), n=2,
             feature_id="x")
    with pytest.raises(ValueError, match="(pickle|Object arrays)"):
        FeatureStats.load(tmp_path / "stats.npz")


# ------------------------------------------------------------------------------------------------ file lists


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    (root / "wavs").mkdir(parents=True)
    (root / "wavs" / "a.wav").touch()
    (tmp_path / "secret.wav").touch()
    return root


@pytest.mark.parametrize("entry", ["../secret.wav", "wavs/../../secret.wav", "{abs}", "../secret", "link.wav"])
def test_file_list_entries_cannot_escape_the_dataset_root(dataset, entry):
    outside = dataset.parent / "secret.wav"
    (dataset / "link.wav").symlink_to(outside)
    entry = entry.format(abs=outside)
    (dataset / "list.txt").write_text(f"wavs/a.wav|fine\n{entry}|text\n")
    with pytest.raises(AudioError, match=r"list\.txt:2: .*outside the list's folder"):
        list_audio_files(dataset / "list.txt")
    allowed = list_audio_files(dataset / "list.txt", allow_outside_root=True)
    assert [p.resolve() for p in allowed] == [(dataset / "wavs" / "a.wav").resolve(), outside.resolve()]


def test_file_list_entries_inside_the_root_are_accepted(dataset):
    (dataset / "list.txt").write_text("wavs/a.wav\n./wavs/a.wav\nwavs/../wavs/a.wav\n# comment\n\na|id only\n")
    files = list_audio_files(dataset / "list.txt")
    assert len(files) == 4 and all(p.resolve().is_relative_to(dataset.resolve()) for p in files)


def test_ljspeech_metadata_cannot_name_clips_outside_its_folder(dataset):
    from diffwave.data import ljspeech_files

    (dataset / "metadata.csv").write_text("a|fine|fine\n../../secret|text|text\n")
    with pytest.raises(AudioError, match=r"metadata\.csv.*outside"):
        ljspeech_files(dataset)
