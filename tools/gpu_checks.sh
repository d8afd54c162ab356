#!/usr/bin/env bash
# The GPU checks (issue 18): one prepared call for a lent GPU machine, and its dry run here. The steps live in
# tools/gpu_checks.py; docs/gpu.md says what travels, how big it is, and how to read what comes back.
#
# Here, once:   bash tools/gpu_checks.sh fetch-wheels   # .whl/ (soundfile, cffi, pycparser for CPython 3.12, manylinux
#                                                       # x86-64) + .gpu_carry/ (24 LJSpeech clips, 20,000 MNIST digits)
#               bash tools/gpu_checks.sh dry-run        # = make gpu-dryrun: the whole call on this CPU, with only the
#                                                       # GPU machine's versions (torch 2.11.0), no network
# There (device tool, carry [".whl", ".gpu_carry"], timeout_s 540):
#               bash tools/gpu_checks.sh run            # every step, under 8 minutes; everything under $OUT
#               bash tools/gpu_checks.sh rerun bench    # only the steps named (comma-separated), under 4 minutes
# Here, after:  bash tools/gpu_checks.sh fid DIR        # FID/KID of DIR/mnist_samples.npz (the Inception stays here)
#               bash tools/gpu_checks.sh refiner-score DIR   # held-out PESQ/STOI/DNSMOS of DIR/refiner.tar's weights
#
# There, the machine's own python3 (3.12, torch 2.11.0) runs the working tree with PYTHONPATH=. and no install: only
# what is missing there is installed from .whl/ with `pip install --no-index --target`.
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
py_here="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py_here" ] || py_here=python3
gpu_python="${GPU_PYTHON:-python3}"
venv="${GPU_DRYRUN_VENV:-$here/.gpu_dryrun_venv}"   # made once, reused (a clean clone may point at an existing one)
stage="${GPU_DRYRUN_STAGE:-/tmp/gpu_dryrun_tree}"

find_python312() {
    for p in "${DRYRUN_PYTHON:-}" python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do
        [ -n "$p" ] && "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$p"; return; }
    done
    return 1
}

case "${1:-}" in
fetch-wheels)
    "$py_here" tools/gpu_checks.py fetch-wheels
    ;;
carry)
    "$py_here" tools/gpu_checks.py carry
    ;;
run|rerun)
    export PYTHONUNBUFFERED=1 PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
    "$gpu_python" tools/gpu_checks.py "$1" "${@:2}"
    ;;
dry-run)
    # 1. a venv with only what the GPU machine has that the package needs, at its versions (torch 2.11.0 from PyPI:
    #    its CUDA build, which runs on the CPU here; about 3.5 GB with its CUDA libraries, once)
    t0=$(date +%s)
    if [ ! -f "$venv/.ready" ]; then
        py312="$(find_python312)" || { echo "dry-run needs a CPython 3.12 (set DRYRUN_PYTHON)" >&2; exit 1; }
        rm -rf "$venv"
        "$py312" -m venv "$venv" || exit 1
        "$venv/bin/python" -m pip install -q "pip==26.3" || exit 1
        "$venv/bin/python" -m pip install -q "torch==2.11.0" "torchaudio==2.11.0" "torchvision==0.26.0" \
            "numpy==2.5.2" scipy "safetensors==0.8.0" pyyaml tqdm pillow || exit 1
        touch "$venv/.ready"
    fi
    t1=$(date +%s)
    # 2. the wheels and data that travel
    if [ ! -d .whl ] || [ ! -f .gpu_carry/mnist_train.npz ]; then "$py_here" tools/gpu_checks.py fetch-wheels || exit 1; fi
    "$py_here" tools/gpu_checks.py carry || exit 1
    # 3. exactly what a call carries, copied to a folder with no ../shared beside it and no .venv in it
    rm -rf "$stage" && mkdir -p "$stage"
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [ -f "$f" ] && [ ! -L "$f" ] && { mkdir -p "$stage/$(dirname "$f")"; cp -p "$f" "$stage/$f"; }
    done
    cp -rp .whl .gpu_carry "$stage/"
    out="${OUT:-$here/gpu_dryrun_out}"
    rm -rf "$out" /tmp/gpu_checks_site && mkdir -p "$out"
    t2=$(date +%s)
    # 4. the call itself, as the GPU machine runs it: no network (unshare -n where it works), the venv's python as
    #    "python3", the CUDA parts on the CPU at toy size
    net="unshare -n"; $net true 2>/dev/null || net=""
    ( cd "$stage" && env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 OMP_NUM_THREADS=1 \
        GPU_PYTHON="$venv/bin/python" OUT="$out" $net bash tools/gpu_checks.sh run "${2:-env,bench,refiner,mnist}" --dry-run )
    rc=$?
    t3=$(date +%s)
    ls -la "$out"
    # 5. what is done here afterwards, on what came back (the locked .venv: PESQ, STOI, DNSMOS, the FID Inception)
    OMP_NUM_THREADS=1 "$py_here" tools/gpu_checks.py refiner-score "$out" || rc=1
    OMP_NUM_THREADS=1 "$py_here" tools/gpu_checks.py fid "$out" --reference 16 --num-samples 16 || rc=1
    t4=$(date +%s)
    echo "dry-run: venv $((t1 - t0)) s, staging $((t2 - t1)) s, the call $((t3 - t2)) s, afterwards $((t4 - t3)) s;" \
         "exit $rc (results in $out)"
    exit $rc
    ;;
fid|refiner-score)
    "$py_here" tools/gpu_checks.py "$1" "${@:2}"
    ;;
*)
    echo "usage: bash tools/gpu_checks.sh fetch-wheels|carry|dry-run|run [STEPS]|rerun STEPS|fid DIR|refiner-score DIR" >&2
    exit 2
    ;;
esac
