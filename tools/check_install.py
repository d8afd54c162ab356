"""Check that the installed environment works: every compiled extension the package uses loads and runs.

``pip check`` proves the declared requirements agree; it cannot see an ABI mismatch such as torchaudio 2.11.1's
``libtorchaudio.so`` beside torch 2.11.0 (an undefined symbol, found only at import). This script imports and
exercises each compiled piece once, prints one line per piece, and exits 1 naming every one that failed.

    .venv/bin/python tools/check_install.py
"""

from __future__ import annotations

import sys
import traceback


def _torch() -> str:
    import torch

    x = torch.randn(4, 8)
    assert torch.allclose((x @ x.T).diagonal(), (x * x).sum(1), atol=1e-5)
    return torch.__version__


def _torchaudio() -> str:
    import torch
    import torchaudio
    import torchaudio.functional as AF

    y = AF.lfilter(torch.randn(1, 64), torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.5]))  # a C++ op of libtorchaudio
    assert y.shape == (1, 64)
    assert AF.resample(torch.randn(1, 2205), 22050, 16000).shape == (1, 1600)
    return torchaudio.__version__


def _torchvision() -> str:
    import torch
    import torchvision
    from torchvision.ops import nms  # a C++ op of torchvision

    keep = nms(torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]]), torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
    return torchvision.__version__


def _soundfile() -> str:
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(100, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    buf.seek(0)
    assert sf.read(buf)[0].shape == (100,)
    return f"{sf.__version__} (libsndfile {sf.__libsndfile_version__})"


def _librosa() -> str:
    import librosa
    import numpy as np

    mel = librosa.feature.melspectrogram(y=np.zeros(4096, dtype=np.float32), sr=22050, n_fft=1024, hop_length=256)
    assert mel.shape[0] == 128
    return librosa.__version__


def _pesq() -> str:
    import numpy as np
    from pesq import pesq

    t = np.arange(16000) / 16000.0
    ref = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    assert 1.0 <= pesq(16000, ref, ref, "wb") <= 5.0
    return "ok"


def _onnxruntime() -> str:
    import onnxruntime

    assert "CPUExecutionProvider" in onnxruntime.get_available_providers()
    return onnxruntime.__version__


def _safetensors() -> str:
    import safetensors
    import torch
    from safetensors.torch import load, save

    assert torch.equal(load(save({"a": torch.arange(3)}))["a"], torch.arange(3))
    return safetensors.__version__


CHECKS = {
    "torch": _torch,
    "torchaudio": _torchaudio,
    "torchvision": _torchvision,
    "soundfile": _soundfile,
    "librosa/numba": _librosa,
    "pesq": _pesq,
    "onnxruntime": _onnxruntime,
    "safetensors": _safetensors,
}


def main() -> int:
    failed = []
    for name, check in CHECKS.items():
        try:
            print(f"ok    {name:14s} {check()}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the others
            failed.append(name)
            print(f"FAIL  {name:14s} {type(e).__name__}: {e}")
            traceback.print_exc(limit=2, file=sys.stdout)
    for module in ("diffcore", "diffwave", "diffimage"):
        try:
            __import__(module)
            print(f"ok    {module}")
        except Exception as e:  # noqa: BLE001
            failed.append(module)
            print(f"FAIL  {module:14s} {type(e).__name__}: {e}")
    if failed:
        print(f"error: the environment is broken: {', '.join(failed)} (reinstall from constraints.txt: make install)")
        return 1
    print("the environment works")
    return 0


if __name__ == "__main__":
    sys.exit(main())
