"""The Docker files say what the README says, without a Docker engine.

The image itself is built, run and queried by ``scripts/docker_smoke.sh`` (``make docker-smoke``),
which needs an engine and is therefore not part of ``make test``.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = (ROOT / "docker-compose.yml").read_text()


def _requirements(name):
    lines = (ROOT / name).read_text().splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def test_runtime_requirements_hold_no_test_tools():
    runtime = _requirements("requirements.txt")
    names = {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower() for r in runtime}
    assert not names & {"pytest", "label-studio-sdk", "pytest-timeout", "pytest-xdist"}
    assert {"torch", "torchvision", "flask", "gunicorn", "matplotlib"} <= names
    test = _requirements("requirements-test.txt")
    assert "-r requirements.txt" in test and any(r.startswith("pytest") for r in test)


def test_dockerfile_is_two_stages_with_the_runtime_only():
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", DOCKERFILE, re.M)
    assert stages == [("${BASE_IMAGE}", "build"), ("${BASE_IMAGE}", "runtime")]
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", DOCKERFILE, re.M)
    for arg in ("DEVICE", "TORCH_INDEX_URL", "PIP_INDEX_URL"):
        assert re.search(rf"^ARG {arg}\b", DOCKERFILE, re.M), arg
    assert "requirements-test" not in DOCKERFILE
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    # the runtime stage takes the virtual environment and nothing else from the build stage
    assert re.findall(r"^COPY\s.*$", runtime, re.M) == ["COPY --from=build /opt/venv /opt/venv"]
    assert "HEALTHCHECK" in runtime and "/health" in runtime
    # torch comes at requirements.txt's pins, from the index argument
    assert "grep -E '^(torch|torchvision)==' /tmp/requirements.txt" in DOCKERFILE
    assert '--index-url "$index"' in DOCKERFILE
    # inside the container the server binds 0.0.0.0, which the backend allows only with basic auth
    assert re.search(r"HOST=0\.0\.0\.0", runtime) and "SAFIRE_ALLOW_UNAUTHENTICATED" not in runtime


def test_compose_passes_the_build_arguments_and_waits_for_health():
    for arg in ("DEVICE", "TORCH_INDEX_URL", "PIP_INDEX_URL", "BASE_IMAGE"):
        assert re.search(rf"^\s+{arg}: \$\{{", COMPOSE, re.M), arg
    assert re.search(r"depends_on:\n\s+label-studio:\n\s+condition: service_healthy", COMPOSE)
    assert "healthcheck:" in COMPOSE
    ports = re.findall(r'ports: \["([^"]+)"\]', COMPOSE)
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)
    assert "BASIC_AUTH_USER: *ml_user" in COMPOSE and "BASIC_AUTH_PASS: *ml_password" in COMPOSE


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "tests", "*.egg-info", "build"):
        assert entry in ignored, entry


def test_smoke_script_is_valid_bash_and_outside_make_test():
    for script in ("scripts/docker_smoke.sh", "scripts/make_base_image.sh"):
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^docker-smoke:\n\tbash scripts/docker_smoke\.sh", makefile, re.M)
    test_recipe = re.search(r"^test: .*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "docker" not in test_recipe


@pytest.mark.parametrize("args", [["--help"], ["--device", "tpu"]])
def test_smoke_script_arguments(args):
    r = subprocess.run(["bash", str(ROOT / "scripts/docker_smoke.sh"), *args], capture_output=True, text=True)
    if args == ["--help"]:
        assert r.returncode == 0 and "--torch-index-url" in r.stdout and "--device cpu|cuda" in r.stdout
    else:
        assert r.returncode == 2 and "--device must be cpu or cuda" in r.stderr
