"""The ``clipgan`` command line, run as a user runs it: a real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.ml_backend import builders

CLI = [sys.executable, "-m", "clipgan.cli"]


def _run(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLIPGAN_DATA_DIR": str(data_dir)}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=300)


def test_convert_then_info(tmp_path: Path) -> None:
    src = builders.write_nvidia_pkl(tmp_path / "anime.pkl", builders.nvidia_generator(
        builders.nvidia_kwargs(conv_clamp=256)))
    out = tmp_path / "anime.safetensors"
    done = _run("convert", str(src), str(out), data_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "nvidia-pkl -> clipgan-safetensors, 32px" in done.stderr
    info = _run("info", str(out), data_dir=tmp_path)
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["format"] == "clipgan-safetensors"
    assert described["config"]["conv_clamp"] == 256
    assert described["demo_weights"] is False


def test_info_defaults_to_labelled_demo_weights(tmp_path: Path) -> None:
    info = _run("info", data_dir=tmp_path)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["demo_weights"] is True


def test_bad_checkpoint_gives_one_line_error_not_a_traceback(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not weights")
    done = _run("convert", str(bogus), str(tmp_path / "out.safetensors"), data_dir=tmp_path)
    assert done.returncode == 2
    assert "not a recognised checkpoint" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.safetensors").exists()
