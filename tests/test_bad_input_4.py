"""Bad input, third pass, the items of issue 21 that stayed open: reproducibility of vocoding, a signal before any
image of ``diffimage sample`` is written, and ``.pt`` files whose storage records claim enormous sizes.

The promises (README's Reliability section, docs/reliability.md): with the same seed a vocoded file's audio depends
on the seed and that input alone, not on the other files of the run, their order or the batch size, and equals
vocoding it alone; an interrupted command leaves no partial or temporary file, says what happened and exits
130/143; a tensor file that lies about its size is refused in one line naming it, before anything large is
allocated.
"""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import diffwave.api as dw
from diffwave.audio import load_audio, save_audio
from diffwave.sample import context_frames, input_seed, plan_chunks, vocode_mels
from diffwave.speech import speech_files

from cli_helpers import error_line, image_cli, wave_cli  # noqa: F401  (used by later sections)


# ================================================================================================ reproducibility


@pytest.fixture(scope="module")
def speech_mels() -> dict[str, torch.Tensor]:
    """Mels of real speech (the shipped clips): a, b, c of 40, 31 and 40 frames (a and c of equal length, so the
    old packing would have batched them), and long (60 frames, several windows at :data:`MAX_FRAMES`)."""
    voc = dw.load("ljspeech-tiny", "cpu")
    wav, _ = load_audio(speech_files()[0], voc.sample_rate)
    mel = voc.mel(wav)
    return {"a": mel[:, 20:60].clone(), "b": mel[:, 60:91].clone(), "c": mel[:, 100:140].clone(),
            "long": mel[:, 150:210].clone()}


#: A ``max_frames`` per shipped model that cuts the long mel into several windows (above twice the context).
MAX_FRAMES = {"ljspeech-tiny": 16, "ljspeech-refiner": 48}


@pytest.fixture(scope="module", params=["ljspeech-tiny", "ljspeech-refiner"])
def shipped(request) -> dw.Vocoder:
    voc = dw.load(request.param, "cpu")
    voc.max_frames = MAX_FRAMES[request.param]
    return voc


def test_input_seed_depends_on_the_seed_and_the_mels_bytes_alone(speech_mels):
    a = speech_mels["a"]
    assert input_seed(3, a) == input_seed(3, a.clone()) == input_seed(3, a.double())  # its float32 bytes
    assert input_seed(3, a) != input_seed(4, a)
    assert input_seed(3, a) != input_seed(3, speech_mels["c"])  # another mel of the same shape
    assert input_seed(3, a) != input_seed(3, a[:, :-1])
    assert 0 <= input_seed(2**63 - 1, a) < 2**63


def test_a_mels_audio_depends_on_the_seed_and_that_mel_alone_in_the_api(shipped, speech_mels):
    """voc.vocode of several mels: each equals vocoding it alone with the same seed, whatever its companions, their
    order, the batch size (windows of a long mel per network call) or the input shape (list or batch)."""
    m = speech_mels
    voc = shipped
    mf = voc.max_frames
    assert len(plan_chunks(m["long"].shape[-1], mf, context_frames(voc.model.config))) >= 3  # windows to batch
    run = voc.vocode([m["a"], m["b"], m["c"], m["long"]], seed=7, max_frames=mf)
    alone = {k: voc.vocode(m[k], seed=7, max_frames=mf) for k in m}
    for k, wav in zip(["a", "b", "c", "long"], run):
        assert torch.equal(wav, alone[k]), k
    # Another batch size changes how many windows one network call holds, and on some processors the convolution
    # kernels oneDNN picks then round differently in the last bits (an Intel Xeon, Ice Lake: 1.3e-7 of audio that
    # peaks at 0.36), so these compare to float rounding; other mels' noise or order would change the audio by its
    # own size.
    def same(x: torch.Tensor, want: torch.Tensor) -> bool:
        return bool((x - want).abs().max() <= 1e-5 * want.abs().max())

    other = voc.vocode([m["long"], m["c"], m["a"]], seed=7, max_frames=mf, batch_size=1)
    for k, wav in zip(["long", "c", "a"], other):
        assert same(wav, alone[k]), k
    batch = voc.vocode(torch.stack([m["c"], m["a"]]), seed=7, max_frames=mf, batch_size=3)
    assert same(batch[0], alone["c"]) and same(batch[1], alone["a"])
    padded, _ = voc.vocode(torch.stack([m["a"], torch.cat([m["b"], m["b"][:, :9]], -1)]), lengths=[40, 31], seed=7,
                           max_frames=mf)
    assert torch.equal(padded[0], alone["a"]) and torch.equal(padded[1, : 31 * 256], alone["b"])
    assert alone["a"].abs().max() > 0.05  # real audio, not silence that would be equal anyway
    if not isinstance(voc, dw.RefinerVocoder):  # the seed matters to a DiffWave, and mels get their own noise
        assert not torch.equal(voc.vocode(m["a"], seed=8, max_frames=mf), alone["a"])
        x = voc.vocode([m["a"], m["a"]], seed=7)
        assert torch.equal(x[0], x[1])  # the same mel gives the same audio, wherever it is in the call


def test_a_generator_gives_each_mel_the_noise_it_would_draw_alone():
    """generator= keeps its meaning for one mel (the noise comes from it, as before) and gives each of several mels
    its own copy of the generator's state, so each equals the mel vocoded alone from that state."""
    voc = dw.load("ljspeech-tiny", "cpu")
    mels = [torch.rand(80, 12) * 0.7 + 0.1, torch.rand(80, 9) * 0.7 + 0.1]
    g = torch.Generator().manual_seed(5)
    both = voc.vocode(mels, generator=g)
    first_after = torch.randn(3, generator=g)
    g1 = torch.Generator().manual_seed(5)
    alone = [voc.vocode(mels[0], generator=g1), voc.vocode(mels[1], generator=torch.Generator().manual_seed(5))]
    assert torch.equal(both[0], alone[0]) and torch.equal(both[1], alone[1])
    assert torch.equal(first_after, torch.randn(3, generator=g1))  # advanced as by the first mel alone
    reverse = voc.vocode(mels[::-1], generator=torch.Generator().manual_seed(5))
    assert torch.equal(reverse[0], alone[1]) and torch.equal(reverse[1], alone[0])
    with pytest.raises(ValueError, match="seed or generator, not both"):
        voc.vocode(mels[0], generator=torch.Generator(), seed=1)
    with pytest.raises(ValueError, match="seed must be"):
        voc.vocode(mels[0], seed=-1)
    with pytest.raises(ValueError, match="seed must be an integer"):
        voc.vocode(mels[0], seed=1.5)


def _samples(path) -> np.ndarray:
    data, _ = sf.read(path, dtype="int16")
    return data


@pytest.mark.parametrize("model", ["ljspeech-tiny", "ljspeech-refiner"])
def test_a_files_audio_in_vocode_depends_on_the_seed_and_that_file_alone(tmp_path, capsys, speech_mels, model):
    """diffwave vocode of files a, b, c (a wav) and d in one run, in another order with other companions and
    batch sizes, and alone: each file's samples are the same (to one 16-bit step where the batch size differs: on
    some processors the convolution kernels round differently by batch size), and equal the API's
    vocode(mel, seed=...)."""
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a.npy", speech_mels["a"].numpy())
    np.save(src / "b.npy", speech_mels["b"].numpy())
    np.save(src / "d.npy", speech_mels["c"].numpy())  # the same length as a
    wav, sr = load_audio(speech_files()[1], 22050)
    sf.write(src / "c.wav", wav[: sr // 2].numpy(), sr, subtype="FLOAT")
    np.save(src / "long.npy", speech_mels["long"].numpy())
    common = ["--model", model, "--device", "cpu", "--seed", "11", "--max-frames", str(MAX_FRAMES[model])]
    assert wave_cli(capsys, "vocode", src, "--out", tmp_path / "all", *common)[0] == 0
    assert wave_cli(capsys, "vocode", src / "long.npy", src / "d.npy", src / "c.wav", src / "a.npy",
                    "--out", tmp_path / "some", "--batch-size", "1", *common)[0] == 0
    runs = {"all": tmp_path / "all", "some": tmp_path / "some"}
    for name in ["a", "c", "long"]:
        assert wave_cli(capsys, "vocode", src / f"{name}.{'wav' if name == 'c' else 'npy'}",
                        "--out", tmp_path / f"alone_{name}.wav", "--batch-size", "3", *common)[0] == 0
        ref = _samples(tmp_path / f"alone_{name}.wav")
        for run in runs.values():  # other batch sizes: float rounding may move a 16-bit sample by one step
            assert np.abs(_samples(run / f"{name}.wav").astype(np.int64) - ref).max() <= 1, (name, run)
    assert np.abs(_samples(tmp_path / "all" / "a.wav")).max() > 1000  # real audio
    voc = dw.load(model, "cpu")
    api = save_audio(tmp_path / "api_long.wav", voc.vocode(speech_mels["long"], seed=11, max_frames=MAX_FRAMES[model]),
                     22050)
    assert np.abs(_samples(api).astype(np.int64) - _samples(tmp_path / "all" / "long.wav")).max() <= 1
    api = save_audio(tmp_path / "api_a.wav", voc.vocode(speech_mels["a"], seed=11), 22050)
    assert np.abs(_samples(api).astype(np.int64) - _samples(tmp_path / "all" / "a.wav")).max() <= 1
    if model == "ljspeech-tiny":
        assert not np.array_equal(_samples(tmp_path / "all" / "a.wav"), _samples(tmp_path / "all" / "d.wav"))


def test_vocode_mels_of_equal_length_mels_are_not_batched_together(speech_mels):
    """The network never sees two inputs in one call: a call's rows are windows of one mel (padding and batch
    composition could otherwise change an input's result)."""
    voc = dw.load("ljspeech-tiny", "cpu")
    rows: list[int] = []
    voc.model.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    vocode_mels(voc.model, [speech_mels["a"], speech_mels["c"]], seed=0, inference="eager", max_frames=None)
    assert rows and set(rows) == {1}


# ======================================================================================= forged .pt storage sizes


def _torch_zip(obj) -> tuple[bytes, zipfile.ZipFile]:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue(), zipfile.ZipFile(io.BytesIO(buf.getvalue()))


def _long(v: int) -> bytes:
    """A pickled int (LONG1, 8 bytes), to put a huge number where torch.save wrote a small one."""
    return b"\x8a\x08" + int(v).to_bytes(8, "little", signed=True)


def _claim(pkl: bytes, numel: int) -> bytes:
    """``pkl`` (a pickle of one 10-element tensor) with its storage record and its size claiming ``numel``."""
    i = pkl.index(b"K\n", pkl.index(b"X\x03\x00\x00\x00cpu"))  # the storage's element count (10)
    pkl = pkl[:i] + _long(numel) + pkl[i + 2:]
    j = pkl.index(b"K\x00K\n", i) + 2  # the tensor's size (10,) after its storage offset 0
    return pkl[:j] + _long(numel) + pkl[j + 2:]


def _rezip(raw: bytes, edit) -> bytes:
    """The torch zip ``raw`` written again entry by entry; ``edit(name, data, zout)`` returns new data or None to
    write the entry itself."""
    zin, out = zipfile.ZipFile(io.BytesIO(raw)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info), zout)
            if data is not None:
                zout.writestr(info, data)
    return out.getvalue()


def forged_pt_files(folder: Path, bomb_bytes: int = 1 << 30) -> dict[str, Path]:
    """Small ``.pt`` files (a 10-float tensor, or a checkpoint-like dict holding one) whose records claim more than
    they hold: ``deflated`` (a storage record compressed with DEFLATE: ``bomb_bytes`` of zeros in about a
    thousandth of that, with the pickle claiming all of it; ``torch.load`` unpacks it into memory), ``record`` (a
    stored record whose zip headers claim 4 GiB), ``storage`` (a pickle claiming 2^36 floats for a 40-byte record),
    ``legacy`` (the legacy format claiming 2^40 elements), ``overlap`` (a hundred more records sharing one 400 kB
    region: 40 MB claimed in a 400 kB file)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw, _ = _torch_zip(torch.arange(10, dtype=torch.float32))
    files = {}

    def deflated(name, data, zout):
        if name.endswith("data.pkl"):
            return _claim(data, bomb_bytes // 4)
        if name.endswith("data/0"):
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zout.open(info, "w", force_zip64=True) as f:
                zeros = bytes(1 << 24)
                for _ in range(bomb_bytes // len(zeros)):
                    f.write(zeros)
            return None
        return data

    files["deflated"] = folder / "deflated.pt"
    files["deflated"].write_bytes(_rezip(raw, deflated))
    stored = _rezip(raw, lambda name, data, zout: data)
    z = zipfile.ZipFile(io.BytesIO(stored))
    info = next(i for i in z.infolist() if i.filename.endswith("data/0"))
    b = bytearray(stored)
    b[info.header_offset + 18 : info.header_offset + 26] = struct.pack("<II", 2**32 - 1, 2**32 - 1)  # local header
    central = stored.index(b"PK\x01\x02" + stored[info.header_offset + 4 : info.header_offset + 6] +
                           stored[info.header_offset + 6 : info.header_offset + 8])
    while not stored[central + 46 : central + 46 + len(info.filename)] == info.filename.encode():
        central = stored.index(b"PK\x01\x02", central + 4)
    b[central + 20 : central + 28] = struct.pack("<II", 2**32 - 1, 2**32 - 1)  # central directory
    files["record"] = folder / "record.pt"
    files["record"].write_bytes(bytes(b))
    files["storage"] = folder / "storage.pt"
    files["storage"].write_bytes(_rezip(raw, lambda name, data, zout: _claim(data, 2**36)
                                        if name.endswith("data.pkl") else data))
    buf = io.BytesIO()
    torch.save(torch.arange(10, dtype=torch.float32), buf, _use_new_zipfile_serialization=False)
    files["legacy"] = folder / "legacy.pt"
    files["legacy"].write_bytes(_claim(buf.getvalue(), 2**40))
    files["overlap"] = folder / "overlap.pt"
    big, _ = _torch_zip(torch.zeros(100_000))  # a 400 kB record, claimed 100 times more
    files["overlap"].write_bytes(_overlapping(_rezip(big, lambda name, data, zout: data), copies=100))
    return files


def _overlapping(stored: bytes, copies: int) -> bytes:
    """``stored`` with ``copies`` more central-directory records of its storage record, all pointing at the same
    bytes (an overlapping-record zip: each costs 46 bytes and claims the whole record again)."""
    z = zipfile.ZipFile(io.BytesIO(stored))
    end = stored.rindex(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<II", stored[end + 12 : end + 20])
    central = stored[cd_offset : cd_offset + cd_size]
    info = next(i for i in z.infolist() if i.filename.endswith("data/0"))
    records, pos = [], 0
    while pos < len(central):
        nlen, elen, clen = struct.unpack("<HHH", central[pos + 28 : pos + 34])
        records.append(central[pos : pos + 46 + nlen + elen + clen])
        pos += 46 + nlen + elen + clen
    mine = next(r for r in records if r[46:].startswith(info.filename.encode()))
    nlen = struct.unpack("<H", mine[28:30])[0]
    extra = []
    for k in range(copies):
        name = info.filename.replace("data/0", f"data/{k + 1}").encode()
        extra.append(mine[:28] + struct.pack("<H", len(name)) + mine[30:46] + name + mine[46 + nlen:])
    new_central = b"".join(records + extra)
    tail = stored[end:]
    count = len(records) + copies
    tail = tail[:8] + struct.pack("<HHII", count, count, len(new_central), cd_offset) + tail[20:]
    return stored[:cd_offset] + new_central + tail


@pytest.fixture(scope="module")
def forged(tmp_path_factory) -> dict[str, Path]:
    return forged_pt_files(tmp_path_factory.mktemp("forged"))


def test_the_forged_files_are_what_they_claim_to_be(forged):
    """The deflated file really is a 1 GiB tensor in about a megabyte (what torch.load would unpack), the others
    are a few hundred bytes; so the refusals below are of real forgeries."""
    assert forged["deflated"].stat().st_size < 2 << 20
    info = next(i for i in zipfile.ZipFile(forged["deflated"]).infolist() if i.filename.endswith("data/0"))
    assert info.file_size == 1 << 30 and info.compress_type == zipfile.ZIP_DEFLATED
    assert all(forged[k].stat().st_size < 20_000 for k in ("record", "storage", "legacy"))
    assert forged["overlap"].stat().st_size < 420_000
    assert len(zipfile.ZipFile(forged["overlap"]).infolist()) > 100


@pytest.mark.parametrize("kind", ["deflated", "record", "storage", "legacy", "overlap"])
def test_a_forged_pt_is_refused_in_one_line_naming_it_wherever_pt_files_are_read(forged, kind, tmp_path, capsys):
    from diffcore.checkpoint import CheckpointError, load_checkpoint
    from diffcore.torchfile import TorchFileError, check_torch_file
    from diffwave.mel import MelError, load_mel_file

    path = forged[kind]
    with pytest.raises(TorchFileError, match=re.escape(str(path)) + ": .*(claim|compressed)"):
        check_torch_file(path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": .*(claim|compressed)"):
        load_checkpoint(path)
    with pytest.raises(MelError, match=re.escape(str(path)) + ": .*(claim|compressed)"):
        load_mel_file(path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        dw.load(path, "cpu")  # the lmnt fallback checks it too, before torch.load would unpack it
    code, err = wave_cli(capsys, "vocode", path, "--model", "ljspeech-refiner", "--out", tmp_path / "o.wav")
    assert code == 2 and re.search("claim|compressed", error_line(err, str(path)))
    assert not (tmp_path / "o.wav").exists()
    # the other .pt readers: lmnt's checkpoint importer and diffusers' weights file refuse it in their own errors
    from diffimage.diffusers_ddpm import DiffusersImportError, _read_weights
    from diffwave.lmnt import LmntImportError, read_lmnt_checkpoint

    with pytest.raises(LmntImportError, match=re.escape(str(path)) + ": .*(claim|compressed)"):
        read_lmnt_checkpoint(path)
    folder = tmp_path / "diffusers"
    folder.mkdir()
    (folder / "diffusion_pytorch_model.bin").write_bytes(path.read_bytes())
    with pytest.raises(DiffusersImportError, match="(claim|compressed)"):
        _read_weights(folder)


def test_honest_torch_files_pass_the_check(tmp_path):
    from diffcore.torchfile import check_torch_file

    obj = {"a": torch.zeros(3, 4, dtype=torch.float16), "b": torch.arange(5), "c": [torch.ones(2, dtype=torch.bool)],
           "shared": torch.ones(6)[2:], "n": 3}
    for legacy in (False, True):
        path = tmp_path / f"ok_{legacy}.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        check_torch_file(path)
        assert torch.equal(torch.load(path, weights_only=True)["a"], obj["a"])
    for ckpt in sorted(Path("diffwave/pretrained").glob("*/*.pt"))[:2]:
        check_torch_file(ckpt)


def test_refusing_a_forged_pt_allocates_nothing_large(forged):
    """In a fresh process: the deflated 1 GiB claim through load_checkpoint, load_mel_file and dw.load raises the
    package's errors, and the peak memory grows by far less than the claim (torch.load alone grows it by 1 GiB)."""
    script = f"""
import resource, sys, torch
import diffwave.api as dw
from diffcore.checkpoint import CheckpointError, load_checkpoint
from diffwave.mel import MelError, load_mel_file
path = {str(forged["deflated"])!r}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for fn, error in ((load_checkpoint, CheckpointError), (load_mel_file, MelError), (dw.load, CheckpointError)):
    try:
        fn(path)
    except error as e:
        assert path in str(e), e
    else:
        sys.exit("accepted")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 200  # MiB; the claim is 1024


# ================================================================================ a signal before any image exists

_SIGNALLED_SAMPLE = """
import sys
import diffimage.api as api

real = api.ImageModel.sample_seeded


def announced(self, *args, **kwargs):  # the parent sends its signal once this line is read
    print("sampling started", file=sys.stderr, flush=True)
    return real(self, *args, **kwargs)


api.ImageModel.sample_seeded = announced
from diffimage.cli import main

raise SystemExit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def slow_image_export(tmp_path_factory) -> Path:
    """A tiny 8x8 U-Net with T = 1000, so that sampling 256 images with 1000 DDPM steps takes long enough to be
    signalled in the middle."""
    from diffimage.api import ImageModel
    from diffimage.config import UNetConfig
    from diffimage.model import UNet

    torch.manual_seed(0)
    config = {"preset": "tiny", "image_size": 8, "channel_mult": [1], "attention_resolutions": [8],
              "diffusion": {"num_steps": 1000}}
    return ImageModel(UNet(UNetConfig.from_dict(config)), "tiny").save(tmp_path_factory.mktemp("slow") / "export")


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("signum, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_while_sampling_before_any_image_is_written_leaves_the_folder_as_it_was(
        tmp_path, capsys, slow_image_export, signum, code):
    """diffimage sample in a child process, signalled from outside while it samples: one error line saying what
    happened, status 128 + signal, no file written or removed (an earlier complete run's outputs stay as they were),
    no temporary file anywhere."""
    import signal
    import time

    out = tmp_path / "out"
    common = ["-m", slow_image_export, "--out", out, "--device", "cpu", "--sampler", "ddpm", "--format", "both"]
    assert image_cli(capsys, "sample", *common, "--n", "2", "--steps", "2")[0] == 0  # an earlier, complete run
    before = _folder_state(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", _SIGNALLED_SAMPLE, "sample", *map(str, common), "--n", "256",
                              "--steps", "1000", "--batch-size", "256"], stderr=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert child.stderr.readline().strip() == "sampling started"
        time.sleep(0.2)
        child.send_signal(getattr(signal, signum))
        err = child.stderr.read()
        status = child.wait(timeout=120)
    finally:
        child.kill()
    assert status == code, err
    line = error_line(err, str(out), f"interrupted by {signum} while sampling", "of 256 images sampled",
                      "nothing was written")
    assert "0 of 256" in line  # one batch of 256: it was stopped in the middle of it
    assert _folder_state(tmp_path) == before
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_sampling_interrupts_restores_the_handlers_and_names_the_progress(tmp_path):
    import signal

    from diffimage.outputs import SampleInterrupted, sampling_interrupts

    old = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SampleInterrupted, match=r"interrupted by SIGTERM while sampling \(3 of 8 images"):
        with sampling_interrupts(tmp_path / "o", 8, lambda: 3):
            signal.raise_signal(signal.SIGTERM)  # to this thread, at once (os.kill may reach another thread later)
    assert signal.getsignal(signal.SIGTERM) is old
    assert not (tmp_path / "o").exists()


class _Evil:
    """Unpickling this would run ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_reading_the_claims_of_a_malicious_pt_runs_nothing(tmp_path):
    """check_torch_file reads the pickle of an untrusted file before torch.load's weights-only loader does: its stub
    unpickler must build no class and call nothing (a pickle that would run a command, zip and legacy layouts)."""
    import pickle

    from diffcore.torchfile import check_torch_file

    marker = tmp_path / "pwned"
    raw, _ = _torch_zip(torch.arange(10, dtype=torch.float32))
    evil = pickle.dumps(_Evil(marker), protocol=2)
    zipped = tmp_path / "evil.pt"
    zipped.write_bytes(_rezip(raw, lambda name, data, zout: evil if name.endswith("data.pkl") else data))
    legacy = tmp_path / "evil_legacy.pt"
    legacy.write_bytes(b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {})) + evil)
    for path in (zipped, legacy):
        check_torch_file(path)  # nothing claimed: passes on to torch.load's weights-only loader, which refuses it
        assert not marker.exists()
    from diffcore.checkpoint import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(zipped)
    assert not marker.exists()
