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
# the dry run's venv: only the GPU machine's versions (torch 2.11.0: PyPI's CUDA build, which runs on the CPU here;
# about 3.5 GB downloaded and 4.8 GB on disk), made once per machine and reused, keyed by what it installs, in a
# cache folder outside the clone (so a clean clone of the same machine reuses it); GPU_DRYRUN_VENV names another
dry_pins=("torch==2.11.0" "torchaudio==2.11.0" "torchvision==0.26.0" "numpy==2.5.2" "scipy" "safetensors==0.8.0"
          "pyyaml" "tqdm" "pillow")
dry_pip="pip==26.3"
dry_cache="${GPU_DRYRUN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/diffstack-gpu-dryrun}"
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
    # every part's wall and CPU seconds (the CPU time of the children this shell waited for: /proc/$$/stat)
    tick=$(getconf CLK_TCK 2>/dev/null || echo 100)
    cpu_now() { local s; read -ra s < /proc/$$/stat; echo $(( s[15] + s[16] )); }
    times_table=""
    t_last=$(date +%s.%N); c_last=$(cpu_now)
    lap() {
        local t c; t=$(date +%s.%N); c=$(cpu_now)
        times_table+=$(awk -v n="$1" -v w="$t" -v w0="$t_last" -v c="$c" -v c0="$c_last" -v k="$tick" \
                       'BEGIN { printf "%-52s %7.1f s wall %7.1f s CPU", n, w - w0, (c - c0) / k }')$'\n'
        t_last=$t; c_last=$c
    }
    # 1. the venv of the GPU machine's versions: reused when its key (Python, pip and the pins) matches
    py312="$(find_python312)" || { echo "dry-run needs a CPython 3.12 (set DRYRUN_PYTHON)" >&2; exit 1; }
    spec="$("$py312" -c 'import sys; print(sys.version.split()[0])') $dry_pip ${dry_pins[*]}"
    venv="${GPU_DRYRUN_VENV:-$dry_cache/venv-$(printf '%s' "$spec" | sha256sum | cut -c1-12)}"
    if [ "$(cat "$venv/.ready" 2>/dev/null)" != "$spec" ]; then
        if [ -e "$venv" ] && [ ! -f "$venv/.ready" ]; then
            echo "dry-run: $venv is not a venv this script made (no .ready); name another GPU_DRYRUN_VENV" >&2; exit 1
        fi
        echo "dry-run: making the venv $venv ($spec)"
        mkdir -p "$(dirname "$venv")"
        [ -z "${GPU_DRYRUN_VENV:-}" ] && find "$dry_cache" -maxdepth 1 -name 'venv-*' ! -path "$venv" \
            -exec rm -rf {} +   # older keys: 4.8 GB each
        tmp="$venv.part.$$"
        rm -rf "$tmp" "$venv"
        "$py312" -m venv "$tmp" || exit 1
        "$tmp/bin/python" -m pip install -q "$dry_pip" || exit 1
        "$tmp/bin/python" -m pip install -q "${dry_pins[@]}" || { rm -rf "$tmp"; exit 1; }
        printf '%s' "$spec" > "$tmp/.ready"
        mv "$tmp" "$venv" || exit 1   # whole or not at all: a build cut short leaves no venv that looks ready
        lap "1. the venv (made: a download, once a machine)"
    else
        lap "1. the venv (reused: $(basename "$venv"))"
    fi
    # 2. the wheels and data that travel
    if [ ! -d .whl ] || [ ! -f .gpu_carry/mnist_train.npz ]; then "$py_here" tools/gpu_checks.py fetch-wheels || exit 1; fi
    "$py_here" tools/gpu_checks.py carry || exit 1
    lap "2. .whl/ and .gpu_carry/, their size"
    # 3. exactly what a call carries, copied to a folder with no ../shared beside it and no .venv in it
    "$py_here" tools/gpu_checks.py stage "$stage" || exit 1
    out="${OUT:-$here/gpu_dryrun_out}"
    rm -rf "$out" /tmp/gpu_checks_site && mkdir -p "$out"
    lap "3. staging what travels"
    # 4. the call itself, as the GPU machine runs it: no network (unshare -n where it works), the venv's python as
    #    "python3", the CUDA parts on the CPU at toy size
    net="unshare -n"; $net true 2>/dev/null || net=""
    ( cd "$stage" && env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 OMP_NUM_THREADS=1 \
        GPU_PYTHON="$venv/bin/python" OUT="$out" $net bash tools/gpu_checks.sh run "${2:-env,bench,refiner,mnist}" --dry-run )
    rc=$?
    lap "4. the call (run --dry-run, torch 2.11.0, no network)"
    ls -la "$out"
    # 5. what is done here afterwards, on what came back (the locked .venv: PESQ, STOI, DNSMOS, the FID Inception)
    OMP_NUM_THREADS=1 "$py_here" tools/gpu_checks.py refiner-score "$out" --max-seconds 2 || rc=1
    lap "5a. afterwards: refiner-score (2 s of 3 clips)"
    OMP_NUM_THREADS=1 "$py_here" tools/gpu_checks.py fid "$out" --reference 8 --num-samples 8 || rc=1
    lap "5b. afterwards: fid (8 samples, 8 digits)"
    printf '%s' "$times_table"
    "$venv/bin/python" - "$out/summary.json" <<'PY' || true
import json, sys
s = json.load(open(sys.argv[1]))
print("the call's steps (the refiner beside bench and mnist):")
for name, st in s["steps"].items():
    print(f"   4. {name:<47} {st['seconds']:7.1f} s wall {st.get('cpu_seconds', 0):7.1f} s CPU")
PY
    echo "dry-run: exit $rc (results in $out)"
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
