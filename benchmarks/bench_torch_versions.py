"""Which torch to lock: the same DiffWave workloads timed under several installed torch versions, interleaved.

    python benchmarks/bench_torch_versions.py /path/to/venv-a/bin/python /path/to/venv-b/bin/python [--rounds 3]

Each interpreter runs the child below (this repository on its path, ``--threads`` threads): a training step of the
``tiny`` preset (batch 8 of 8-frame crops, forward + backward + Adam) and 6-step vocoding of 1 s with the ``base``
preset in eager float32. Rounds alternate between the interpreters so that a change in machine load falls on all of
them; the table gives each one's median and its ratio to the first interpreter. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))
from diffwave.config import DiffWaveConfig
from diffwave.model import DiffWave
torch.manual_seed(0)
res = {"torch": torch.__version__}
m = DiffWave(DiffWaveConfig.preset("tiny"))
opt = torch.optim.Adam(m.parameters(), 1e-3)
x, mel, t = torch.randn(8, 2048), torch.rand(8, 80, 8), torch.randint(0, 50, (8,))
def step():
    loss = (m(x, t, mel) - x).abs().mean(); opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3): step()
t0 = time.perf_counter(); n = 20
for _ in range(n): step()
res["train_step_tiny_ms"] = 1e3 * (time.perf_counter() - t0) / n
b = DiffWave(DiffWaveConfig.preset("base")).eval()
xb, melb = torch.randn(1, 86 * 256), torch.rand(1, 80, 86)
with torch.no_grad():
    b(xb, torch.tensor([3]), melb)
    t0 = time.perf_counter()
    for k in range(6): b(xb, torch.tensor([k]), melb)
res["vocode_base_1s_6steps_s"] = time.perf_counter() - t0
print(json.dumps(res))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pythons", nargs="+", help="interpreters, each with its own torch (the first is the baseline)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    runs: dict[str, list[dict]] = {py: [] for py in args.pythons}
    for r in range(args.rounds):
        for py in args.pythons:
            out = subprocess.run([py, "-c", CHILD, str(ROOT), str(args.threads)], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
            runs[py].append(json.loads(out))
            print(f"round {r + 1}: {py}: {out}", flush=True)
    keys = ["train_step_tiny_ms", "vocode_base_1s_6steps_s"]
    base = {k: statistics.median(x[k] for x in runs[args.pythons[0]]) for k in keys}
    print("\n| torch | " + " | ".join(f"{k} (median) | ratio" for k in keys) + " |")
    print("|---|" + "---:|---:|" * len(keys))
    for py in args.pythons:
        med = {k: statistics.median(x[k] for x in runs[py]) for k in keys}
        print(f"| {runs[py][0]['torch']} | " + " | ".join(f"{med[k]:.3f} | {med[k] / base[k]:.2f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
