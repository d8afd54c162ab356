"""Vocoding speed of the shipped vocoders beside DiffWave BASE and lmnt's computation, in one process (issue 17).

    .venv/bin/python benchmarks/bench_vocoder_speed.py [--seconds 10] [--threads 2] [--repeats 3] [--out FILE.json]

Every system vocodes the same mel (``--seconds`` of LJSpeech from the shared data, else of synthetic speech-like
audio) at batch 1 through its default path, ``--repeats`` times; the figure is seconds of audio per second of wall
time (× real time) and per CPU second of this process, the median of the repeats, with the ratio to the first row
(the refiner). The DiffWave BASE rows vocode the first ``--base-seconds`` of the same mel (their cost is linear in
the length, and 10 s takes minutes per repeat on a CPU). Systems: the shipped refiner (``ljspeech-refiner``; its speed does not depend on its weights) and
its Griffin-Lim part alone; the shipped ``ljspeech-tiny`` (6-step fast schedule, default inference path); DiffWave
BASE (30 × 64, untrained weights: speed does not depend on them) with the default path, and with eager float32
(``inference="eager"``: lmnt-com/diffwave's computation, the same arithmetic as its ``inference.py`` loop).
A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402


def _mel(seconds: float):
    import torch

    from diffwave.audio import load_audio
    from diffwave.mel import MelConfig, compute_mel
    from diffwave.synth import speech_like

    root = ROOT.parent / "shared" / "data" / "ljspeech" / "wavs"
    n = int(seconds * 22050)
    if root.is_dir():
        wav = torch.cat([load_audio(f, 22050)[0] for f in sorted(root.glob("*.wav"))[:3]])[:n]
        source = "LJSpeech LJ001-0001..0003 joined"
    else:
        wav = speech_like(seconds, 22050, seed=0)
        source = "synthetic speech-like audio"
    return compute_mel(wav.clamp(-1, 1), MelConfig.diffwave()), source


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-base", action="store_true", help="leave out DiffWave BASE (minutes per repeat on a CPU)")
    p.add_argument("--base-seconds", type=float, default=2.0,
                   help="audio for the DiffWave BASE rows (its cost is linear in the length; default 2 s)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    a = p.parse_args(argv)

    import torch

    import diffwave.api as dw
    from diffwave.config import DiffWaveConfig
    from diffwave.model import DiffWave
    from diffwave.refiner import GriffinLimRefiner, RefinerConfig
    from diffwave.refiner_vocoder import RefinerVocoder

    torch.set_num_threads(a.threads)
    mel, source = _mel(a.seconds)
    base_mel = mel[:, : max(2, round(a.base_seconds * 22050 / 256))]
    audio_s = mel.shape[-1] * 256 / 22050
    if "ljspeech-refiner" in dw.available_models():
        refiner = dw.load("ljspeech-refiner", "cpu")
    else:
        refiner = RefinerVocoder(GriffinLimRefiner(RefinerConfig()))
    systems = [("refiner (Griffin-Lim + network), default path", mel, lambda: refiner.vocode(mel)),
               (f"its Griffin-Lim part alone ({refiner.config.gl_iters} it.)", mel,
                lambda: refiner.model.griffin_lim(mel[None]))]
    if "ljspeech-tiny" in dw.available_models():
        tiny = dw.load("ljspeech-tiny", "cpu")
        systems.append(("ljspeech-tiny DiffWave, 6 steps, default path", mel,
                        lambda: tiny.vocode(mel, generator=torch.Generator().manual_seed(0))))
    if not a.skip_base:
        torch.manual_seed(0)
        base = dw.Vocoder(DiffWave(DiffWaveConfig.preset("base")))
        systems.append(("DiffWave BASE, 6 steps, default path", base_mel,
                        lambda: base.vocode(base_mel, generator=torch.Generator().manual_seed(0))))
        systems.append(("DiffWave BASE, 6 steps, eager fp32 (lmnt's computation)", base_mel,
                        lambda: base.vocode(base_mel, generator=torch.Generator().manual_seed(0), inference="eager")))
    rows = []
    print(f"{cpu_name()}, {a.threads} thread(s), torch {torch.__version__}; {audio_s:.2f} s of audio ({source}), "
          f"batch 1, median of {a.repeats}", flush=True)
    for name, m, fn in systems:
        seconds = m.shape[-1] * 256 / 22050
        walls, cpus = [], []
        with torch.inference_mode():
            for _ in range(a.repeats):
                w0, c0 = time.perf_counter(), time.process_time()
                fn()
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
        row = {"system": name, "audio_seconds": seconds, "x_realtime_wall": seconds / statistics.median(walls),
               "x_realtime_cpu": seconds / statistics.median(cpus), "wall_s": walls, "cpu_s": cpus}
        rows.append(row)
        ratio = row["x_realtime_wall"] / rows[0]["x_realtime_wall"]
        print(f"  {name:58s} {row['x_realtime_wall']:8.2f}x real time (wall)  {row['x_realtime_cpu']:8.2f}x "
              f"(CPU time)  {ratio:6.3f}x the refiner", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"machine": cpu_name(), "threads": a.threads, "torch": torch.__version__,
                                           "audio_seconds": audio_s, "source": source,
                                           "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
