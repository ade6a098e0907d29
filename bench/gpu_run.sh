#!/usr/bin/env bash
# The GPU benchmark (issue 7, part 3) in one line: set up, then bench/bench_gpu.py under a time limit.
#
#   bench/gpu_run.sh prepare      # HERE, where PyPI is reachable: fetch the wheels the device machine
#                                 # lacks into build/gpu_wheels, link the hippocampus data at build/gpu_data
#   bench/gpu_run.sh [ARGS...]    # THERE, on the CUDA machine: install those wheels if needed, run
#                                 # bench/bench_gpu.py ARGS (e.g. --compile) within GPU_BENCH_LIMIT_S
#
# The device tool, from the repository root (build/ is git-ignored, so the wheels and the data travel
# only when carried; the data goes through the link, nothing is copied into the repository):
#   run(command="bash bench/gpu_run.sh", timeout_s=540,
#       carry=["build/gpu_wheels", "build/gpu_data/imagesTr", "build/gpu_data/labelsTr",
#              "build/gpu_data/dataset.json"])
# Results: bench/results/gpu.json there, copied with the log into $OUT when the tool sets it.
#
# Environment: GPU_BENCH_PYTHON (a python whose torch sees CUDA; default: the first of python3,
# .venv/bin/python, python that does), GPU_BENCH_LIMIT_S (hard limit, default 480 s; the script itself
# stops starting new measurements after --budget-s, default 420 s), GPU_BENCH_ALLOW_CPU=1 (accept a
# torch without CUDA: for --smoke checks of this script on a CPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=build/gpu_wheels
DATA_LINK=build/gpu_data
SHARED_DATA=../shared/data/msd-hippocampus
SITE=/tmp/gpu_bench_site
LIMIT_S=${GPU_BENCH_LIMIT_S:-480}
# What bench_gpu.py imports beyond what a CUDA image with torch, numpy, scipy, scikit-image,
# matplotlib, tensorboard and pillow already has (the device machine's, as listed in its KINDS.md).
PACKAGES=(monai pytorch-ignite nibabel pydicom)
MODULES="monai, ignite, nibabel, pydicom"

prepare() {
    local python=.venv/bin/python
    [ -x "$python" ] || python=python3
    local specs=()
    for package in "${PACKAGES[@]}"; do
        # the versions this project is tested with, where its virtual environment has them
        version=$("$python" -c "import importlib.metadata as m; print(m.version('$package'))" 2>/dev/null || true)
        specs+=("$package${version:+==$version}")
    done
    mkdir -p "$WHEELS"
    # pure-Python wheels: any CPython 3 on x86-64 Linux takes them
    "$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "${specs[@]}"
    if [ -f "$SHARED_DATA/dataset.json" ]; then
        ln -sfn "$(cd "$SHARED_DATA" && pwd)" "$DATA_LINK"
        echo "data: $DATA_LINK -> $(readlink "$DATA_LINK")"
    else
        echo "no $SHARED_DATA: the benchmark will use synthetic volumes (recorded in the JSON)" >&2
    fi
    echo "wheels: $(ls "$WHEELS" | tr '\n' ' ')"
    echo 'now: run(command="bash bench/gpu_run.sh", timeout_s=540, carry=["build/gpu_wheels",' \
        '"build/gpu_data/imagesTr", "build/gpu_data/labelsTr", "build/gpu_data/dataset.json"])'
}

pick_python() {
    local wanted='import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'
    [ "${GPU_BENCH_ALLOW_CPU:-0}" = 1 ] && wanted='import torch'
    for python in ${GPU_BENCH_PYTHON:-} python3 .venv/bin/python python; do
        if command -v "$python" >/dev/null 2>&1 && "$python" -c "$wanted" >/dev/null 2>&1; then
            echo "$python"
            return 0
        fi
    done
    echo "gpu_run.sh: no Python here has a torch that sees a CUDA device (tried: ${GPU_BENCH_PYTHON:-}" \
        "python3 .venv/bin/python python). Install a CUDA build of torch (see https://pytorch.org/get-started," \
        "e.g. pip install torch --index-url https://download.pytorch.org/whl/cu126), or name one with" \
        "GPU_BENCH_PYTHON=/path/to/python; nvidia-smi says: $(nvidia-smi -L 2>&1 | head -1)" >&2
    return 1
}

run() {
    local python
    python=$(pick_python)
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # unet_monai from this tree, no pip install -e
    if ! "$python" -c "import $MODULES" >/dev/null 2>&1; then
        if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
            echo "gpu_run.sh: $python lacks some of: $MODULES, and there are no wheels in $WHEELS." \
                "Run 'bench/gpu_run.sh prepare' where PyPI is reachable and carry $WHEELS," \
                "or: $python -m pip install ${PACKAGES[*]}" >&2
            return 1
        fi
        PIP_ROOT_USER_ACTION=ignore "$python" -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl
        export PYTHONPATH="$PWD:$SITE${PYTHONPATH#"$PWD"}"
    fi
    "$python" -c "import unet_monai, $MODULES" || {
        echo "gpu_run.sh: the imports above failed with $python (PYTHONPATH=$PYTHONPATH)" >&2
        return 1
    }
    local args=("$@") output=bench/results/gpu.json
    if [[ " $* " != *" --data "* ]]; then
        if [ -f "$DATA_LINK/dataset.json" ]; then
            args+=(--data "$DATA_LINK")
        elif [ -f "$SHARED_DATA/dataset.json" ]; then
            args+=(--data "$SHARED_DATA")
        fi
    fi
    if [[ " $* " == *" --output "* ]]; then
        output=$(printf '%s\n' "$@" | grep -A1 -x -- --output | tail -1)
    else
        args+=(--output "$output")
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    echo "== $python bench/bench_gpu.py ${args[*]} (limit ${LIMIT_S} s)"
    local status=0
    set -o pipefail
    PYTHONUNBUFFERED=1 timeout --kill-after=20 "$LIMIT_S" "$python" bench/bench_gpu.py "${args[@]}" 2>&1 |
        tee "${OUT:-/tmp}/gpu_bench.log" || status=$?
    [ "$status" = 124 ] && echo "gpu_run.sh: stopped at the $LIMIT_S s limit; $output holds what was measured" >&2
    if [ -n "${OUT:-}" ] && [ -f "$output" ]; then
        cp "$output" "$OUT/"
    fi
    return "$status"
}

if [ "${1:-}" = prepare ]; then
    prepare
else
    run "$@"
fi
