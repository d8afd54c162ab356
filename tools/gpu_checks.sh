#!/usr/bin/env bash
# The GPU checks of issues 4, 5 and 6 as one prepared script, for a session that is lent a GPU machine.
#
# Here (before the device call), copy the data the checks need into the git-ignored .data/ folder:
#     bash tools/gpu_checks.sh prepare            # ~17 MB: 24 LJSpeech clips + MNIST
# Then on the GPU machine (device tool: carry [".data"]; the script installs .venv there if it is missing):
#     bash tools/gpu_checks.sh run                # writes everything under $OUT (or ./gpu_checks_out)
#
# run: (1) the benchmark suite (benchmarks/run_gpu.py, its own 400 s budget); (2) ljspeech_prior trained on the 24
# shared clips for LJ_STEPS steps (about 8 minutes at the H200 speeds BENCHMARKS.md will record; lower it on a
# slower card), then vocoding 2 held-out clips with metrics beside Griffin-Lim; (3) the mnist recipe for
# MNIST_STEPS steps, 1000 DDIM samples, FID against the training set and a grid. Each part logs to its own file and
# a failure in one does not stop the others. Record the card's name (nvidia-smi) with every figure.
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
out="${OUT:-$here/gpu_checks_out}"
data="${DIFF_DATA:-$here/../shared/data}"
LJ_STEPS="${LJ_STEPS:-8000}"
MNIST_STEPS="${MNIST_STEPS:-6000}"
FID_SAMPLES="${FID_SAMPLES:-1000}"

case "${1:-run}" in
prepare)
    mkdir -p .data/ljspeech .data/mnist
    cp -r "$data/ljspeech/wavs" .data/ljspeech/
    cp "$data/mnist/train.npz" .data/mnist/
    du -sh .data
    ;;
run)
    mkdir -p "$out"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv && .venv/bin/python -m pip install -q -e ".[eval,dev]" || exit 1
    fi
    bin=.venv/bin
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
    export PYTHONUNBUFFERED=1
    timeout 450 $bin/python benchmarks/run_gpu.py --out "$out" > "$out/bench.log" 2>&1
    echo "benchmarks: exit $?" | tee -a "$out/summary.txt"
    ( $bin/diffwave train --recipe recipes/ljspeech_prior.yaml --data .data/ljspeech/wavs --run-dir "$out/ljs" \
          data.holdout=2 train.max_steps="$LJ_STEPS" train.progress=false train.sample_every=0 train.val_every=0 \
      && $bin/diffwave evaluate --model "$out/ljs" --n 2 --out "$out/ljs_eval" ) > "$out/ljs.log" 2>&1
    echo "ljspeech_prior: exit $?" | tee -a "$out/summary.txt"
    ( $bin/diffimage train --recipe recipes/mnist.yaml --data .data/mnist/train.npz --run-dir "$out/mnist" \
          train.max_steps="$MNIST_STEPS" train.progress=false \
      && $bin/diffimage sample --model "$out/mnist" --sampler ddim --steps 50 --n 64 --out "$out/mnist_samples" \
      && $bin/diffimage evaluate --model "$out/mnist" --metrics fid,kid --num-samples "$FID_SAMPLES" \
          --reference .data/mnist/train.npz --reference-limit 10000 --out "$out/mnist_eval" ) > "$out/mnist.log" 2>&1
    echo "mnist: exit $?" | tee -a "$out/summary.txt"
    ;;
*)
    echo "usage: bash tools/gpu_checks.sh prepare|run" >&2
    exit 2
    ;;
esac
