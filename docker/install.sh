#!/bin/sh
# Installs torch, then unet-monai pinned to that torch build: the one install path of both Docker
# images (docker/Dockerfile.cpu, docker/Dockerfile.cuda) and of `make docker-check` outside Docker.
#
#   install.sh [--python PY] [--constraint FILE] torch SPEC [INDEX_URL]
#       Install SPEC (e.g. torch==2.13.0) from INDEX_URL (e.g. https://download.pytorch.org/whl/cpu;
#       default: pip's own index) or, with SPEC "preinstalled", keep the torch PY already has (the
#       CUDA image's base). Then write FILE pinning that exact build (torch==2.13.0+cpu), so that
#       nothing installed later can swap in another (multi-GB CUDA) build.
#   install.sh [--python PY] [--constraint FILE] project DIR
#       pip install DIR (the repository: unet_monai, pipelines, the `unet-monai` command) under FILE,
#       then check that torch is still the pinned build and that the command runs.
#
# PY defaults to python3; FILE to /etc/unet-monai/torch-constraint.txt. Two steps so that a Docker
# layer with torch stays cached while the project's code changes.
set -eu

PY=python3
CONSTRAINT=/etc/unet-monai/torch-constraint.txt

die() {
    echo "install.sh: error: $*" >&2
    exit 2
}

usage() {
    sed -n '2,15p' "$0" >&2
    exit 2
}

torch_version() {
    "$PY" -c 'import torch; print(torch.__version__)'
}

install_torch() {
    spec=$1
    index=${2:-}
    if [ "$spec" = preinstalled ]; then
        version=$(torch_version) || die "'preinstalled': $PY cannot import torch; give a torch spec instead"
    else
        if [ -n "$index" ]; then
            "$PY" -m pip install --index-url "$index" "$spec"
        else
            "$PY" -m pip install "$spec"
        fi
        version=$(torch_version) || die "$spec installed, but $PY cannot import torch"
    fi
    mkdir -p "$(dirname "$CONSTRAINT")"
    echo "torch==$version" >"$CONSTRAINT"
    echo "install.sh: torch $version pinned in $CONSTRAINT"
}

install_project() {
    dir=$1
    [ -f "$dir/pyproject.toml" ] || die "$dir: no pyproject.toml (give the repository folder)"
    [ -f "$CONSTRAINT" ] || die "$CONSTRAINT: no torch pin; run 'install.sh torch SPEC' first"
    "$PY" -m pip install --constraint "$CONSTRAINT" "$dir"
    pinned=$(cat "$CONSTRAINT")
    now="torch==$(torch_version)"
    [ "$now" = "$pinned" ] || die "torch changed from $pinned to $now while installing $dir"
    # -I: import the installed package, never a source tree in the current folder.
    where=$("$PY" -I -c 'import unet_monai; print(unet_monai.__file__)')
    "$PY" -I -m unet_monai.cli --help >/dev/null || die "the unet-monai command does not run"
    echo "install.sh: unet-monai installed ($where) with $now"
}

while [ $# -gt 0 ]; do
    case $1 in
        --python) [ $# -ge 2 ] || usage; PY=$2; shift 2 ;;
        --constraint) [ $# -ge 2 ] || usage; CONSTRAINT=$2; shift 2 ;;
        -h | --help) usage ;;
        *) break ;;
    esac
done

[ $# -ge 1 ] || usage
step=$1
shift
case $step in
    torch) { [ $# -ge 1 ] && [ $# -le 2 ]; } || usage; install_torch "$@" ;;
    project) [ $# -eq 1 ] || usage; install_project "$1" ;;
    *) die "unknown step '$step' (torch or project)" ;;
esac
