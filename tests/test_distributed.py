"""Scale-out: two gloo processes under torchrun train exactly like one process with the same global batch, only
rank 0 writes, and a checkpoint resumes under another world size. Run as a script, this file is the torchrun worker."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffcore.checkpoint import find_latest, load_checkpoint
from diffcore.config import ConfigError
from diffcore.train import TrainConfig, Trainer, read_log
from diffcore.train.data import ResumableSampler
from diffcore.train.toy import ToyTask

REPO = Path(__file__).resolve().parents[1]


def make_config(max_steps: int, grad_accum: int = 1) -> TrainConfig:
    # clipping on, so that the gradient norm (computed after DDP's all-reduce) must agree across processes
    return TrainConfig(max_steps=max_steps, batch_size=8, grad_accum=grad_accum, lr=1e-2, grad_clip=0.05,
                       num_workers=0, log_every=1, ckpt_every=0, device="cpu", progress=False, tensorboard=False,
                       ema_decay=0.5, seed=0)


def make_task() -> ToyTask:
    return ToyTask(n=20, deterministic=True)  # no random noise: the per-rank noise streams cannot matter


# ------------------------------------------------------------------------------------------------ sampler


def test_ranks_and_micro_batches_see_exactly_the_single_process_batches():
    n, batch = 21, 8
    single = list(ResumableSampler(n, batch, seed=3))
    assert len(single) == 16 and len(set(single)) == 16  # two whole global batches, no repeats
    for world, micro in ((2, 4), (4, 2), (2, 2)):
        streams = [list(ResumableSampler(n, batch, rank=r, world_size=world, seed=3)) for r in range(world)]
        per_step = batch // world
        for step in range(2):
            seen = sorted(i for s in streams for i in s[step * per_step:(step + 1) * per_step])
            assert seen == sorted(single[step * batch:(step + 1) * batch]), (world, micro, step)
    # resuming at a global offset continues the same stream, whatever the world size
    resumed = ResumableSampler(n, batch, rank=1, world_size=2, seed=3)
    resumed.set_epoch(0, start_samples=8)
    assert list(resumed) == single[8:16][1::2]


def test_epochs_differ_and_are_reproducible():
    a, b = ResumableSampler(30, 10, seed=1), ResumableSampler(30, 10, seed=1)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)


def test_batch_must_split_over_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    cfg = make_config(2).replace(batch_size=8, grad_accum=4)
    with pytest.raises(ConfigError, match=r"batch_size \(8\) must be divisible by world_size \(4\) x "
                                          r"train.grad_accum \(4\) = 16"):
        Trainer(make_task(), cfg, tmp_path).fit()


# ------------------------------------------------------------------------------------------------ torchrun


def _worker() -> None:
    run_dir, max_steps, grad_accum = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    summary = Trainer(make_task(), make_config(max_steps, grad_accum), run_dir).fit()
    assert summary["world_size"] == int(os.environ["WORLD_SIZE"])


def _torchrun(run_dir: Path, nproc: int, max_steps: int, grad_accum: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           __file__, str(run_dir), str(max_steps), str(grad_accum)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_gloo_processes_match_one_process(tmp_path):
    ddp_run = tmp_path / "ddp"
    _torchrun(ddp_run, nproc=2, max_steps=4, grad_accum=2)  # 2 ranks x 2 micro-batches of 2 = global batch 8
    single = Trainer(make_task(), make_config(4), tmp_path / "single")
    single.fit()

    state = load_checkpoint(find_latest(ddp_run))
    assert state["step"] == 4 and state["world_size"] == 2
    assert len(state["rng"]["ranks"]) == 2  # every rank's RNG state, for an exact resume
    # (parameters only: the toy model's `calls` buffer counts forward passes, 2 per step per rank here)
    for k, v in single.model.named_parameters():
        torch.testing.assert_close(state["model"][k], v.detach(), rtol=1e-5, atol=1e-6, msg=k)
    for k, v in single.ema.module.named_parameters():
        torch.testing.assert_close(state["ema"]["shadow"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    # only rank 0 wrote logs: one record per step, losses equal to the single process's (global mean)
    ddp_log, single_log = read_log(ddp_run), read_log(tmp_path / "single")
    assert [r["step"] for r in ddp_log] == [1, 2, 3, 4]
    for a, b in zip(ddp_log, single_log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == ["latest", "step_00000004.pt"]

    # the two-process checkpoint resumes in one process (other world size) and continues the same run
    resumed = Trainer(make_task(), make_config(6), ddp_run)
    resumed.fit()
    straight = Trainer(make_task(), make_config(6), tmp_path / "straight")
    straight.fit()
    got = dict(resumed.model.named_parameters())
    for k, v in straight.model.named_parameters():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert [e["step"] for e in read_log(ddp_run, "rng_reseeded")] == [4]


if __name__ == "__main__":
    _worker()
