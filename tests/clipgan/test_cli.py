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
    assert "not a recognised" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_generate_writes_a_png_with_its_recipe(tmp_path: Path) -> None:
    from ml_backend.png import read_png_text

    out = tmp_path / "girl.png"
    done = _run("generate", "blue hair, smile | hat:-0.5", "--steps", "5", "--seed", "3",
                "-o", str(out), data_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "seed 3" in done.stderr and "[untrained demo weights]" in done.stderr
    text = read_png_text(out.read_bytes())
    assert text["prompt"] == "blue hair, smile:1 | hat:-0.5" and text["steps"] == "5"


def test_sample_by_name_is_repeatable(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out in (a, b):
        done = _run("sample", "--seed", "Asuka", "-o", str(out), data_dir=tmp_path)
        assert done.returncode == 0, done.stderr
    assert a.read_bytes() == b.read_bytes()


def test_generate_bad_input_says_what_to_fix(tmp_path: Path) -> None:
    too_long = _run("generate", "word " * 90, data_dir=tmp_path)
    assert too_long.returncode == 2 and "tokens long" in too_long.stderr
    bad_psi = _run("generate", "smile", "--psi", "3", data_dir=tmp_path)
    assert bad_psi.returncode == 2 and "psi: Input should be less than or equal to 2" in bad_psi.stderr
    no_model = _run("sample", "--model", "pokemon", data_dir=tmp_path)
    assert no_model.returncode == 2 and "unknown model 'pokemon'" in no_model.stderr
    assert "Traceback" not in too_long.stderr + bad_psi.stderr + no_model.stderr


def test_serve_refuses_an_unknown_generator_mode(tmp_path: Path) -> None:
    done = _run("serve", "--generator", "gpu-farm", data_dir=tmp_path)
    assert done.returncode == 2
    assert "--generator must be 'ray' or 'in-process', not 'gpu-farm'" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_a_replica_this_machine_cannot_place(tmp_path: Path) -> None:
    done = subprocess.run([*CLI, "serve"], capture_output=True, text=True, timeout=300, env={
        **os.environ, "CLIPGAN_DATA_DIR": str(tmp_path), "CLIPGAN_REPLICA_CPUS": "512",
        "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 2, done.stderr  # instead of waiting forever for 512 CPUs
    assert "a generator replica needs 512 CPU but this machine has" in done.stderr
    assert "lower CLIPGAN_REPLICA_CPUS" in done.stderr and "Traceback" not in done.stderr


def test_serve_says_what_to_do_when_ray_cannot_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = subprocess.run([*CLI, "serve"], capture_output=True, text=True, timeout=300, env={
        **os.environ, "CLIPGAN_DATA_DIR": str(tmp_path), "RAY_TMPDIR": str(tmp_path / "file"),
        "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 2, done.stderr
    assert "could not start a local Ray (NotADirectoryError" in done.stderr
    assert "--generator in-process" in done.stderr and "Traceback" not in done.stderr


def test_users_create_and_db_commands(tmp_path: Path) -> None:
    # these only touch the database: no secret key needed, whatever CLIPGAN_ENV says,
    # so the line `clipgan serve` prints works in a second terminal as written
    env_dev = {"CLIPGAN_ENV": "prod", "CLIPGAN_NEW_PASSWORD": "a long password"}

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        full = {**os.environ, "CLIPGAN_DATA_DIR": str(tmp_path), **env}
        return subprocess.run([*CLI, *args], capture_output=True, text=True, env=full,
                              timeout=120)

    made = run("users", "create", "root", "root@x.io", "--admin", **env_dev)
    assert made.returncode == 0 and "created administrator root" in made.stderr
    again = run("users", "create", "root", "other@x.io", **env_dev)
    assert again.returncode == 2 and "already registered" in again.stderr
    weak = run("users", "create", "eve", "eve@x.io", CLIPGAN_ENV="dev",
               CLIPGAN_NEW_PASSWORD="short")
    assert weak.returncode == 2 and "password: String should have at least 8" in weak.stderr
    down = run("db", "downgrade", "base", CLIPGAN_ENV="prod")
    assert down.returncode == 0 and "revision None" in down.stderr
    up = run("db", "upgrade", CLIPGAN_ENV="prod")
    assert up.returncode == 0 and "revision 0009" in up.stderr
    no_secret = run("web", "--port", "1", CLIPGAN_ENV="prod")  # what signs tokens refuses
    assert no_secret.returncode == 2 and "CLIPGAN_SECRET_KEY is not set" in no_secret.stderr


def test_dispatcher_without_an_ml_side_says_how_to_configure_one(tmp_path: Path) -> None:
    env = {**os.environ, "CLIPGAN_DATA_DIR": str(tmp_path), "CLIPGAN_ENV": "dev"}
    done = subprocess.run([*CLI, "dispatcher"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 2
    assert "set CLIPGAN_ML_TRANSPORT to ray or http" in done.stderr
    http_without_url = subprocess.run([*CLI, "dispatcher"], capture_output=True, text=True,
                                      env={**env, "CLIPGAN_ML_TRANSPORT": "http"}, timeout=120)
    assert http_without_url.returncode == 2
    assert "needs CLIPGAN_ML_URL and CLIPGAN_ML_SECRET" in http_without_url.stderr
