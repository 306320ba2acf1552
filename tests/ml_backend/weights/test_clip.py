"""CLIP from a local file: refusals name the file and say why; TorchScript archives
(OpenAI's release format) are read for their tensors, and their code never runs."""

from __future__ import annotations

import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from ml_backend.weights import CheckpointError, load_clip
from ml_backend.weights.formats import read_state_dict
from ml_backend.weights.torchscript import read_torchscript_tensors


def test_clip_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_clip(tmp_path / "ViT-B-32.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_clip(junk)


@pytest.fixture(scope="module")
def traced_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP saved the way OpenAI released theirs: a traced TorchScript
    archive (in fp16 like theirs)."""
    from ml_backend.weights import import_clip

    clip = import_clip()
    model = clip.model.CLIP(32, 32, 1, 64, 16, 77, 49408, 64, 1, 1).eval()
    model.half()
    image, text = torch.randn(1, 3, 32, 32).half(), torch.randint(0, 49408, (1, 77))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.float(), (image.float(), text), check_trace=False)
    path = tmp_path_factory.mktemp("clip") / "ViT-tiny.pt"
    traced.save(str(path))
    return path


def test_a_torchscript_archive_gives_exactly_its_state_dict(traced_clip: Path) -> None:
    expected = torch.jit.load(str(traced_clip), map_location="cpu").state_dict()
    got = read_state_dict(traced_clip)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    model = load_clip(traced_clip)
    assert model.visual.input_resolution == 32 and model.context_length == 77


EVIL = '''
import sys
from typing import Tuple
import torch

class Evil(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))
        self.scratch = torch.zeros(1, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        self.weight = state[0]
        self.training = state[1]
        # maps any file it can open, and writes into it
        self.scratch = torch.from_file({target!r}, shared=True, size=4096, dtype=torch.uint8)
        self.scratch.fill_(66)

torch.jit.script(Evil()).save(sys.argv[1])
'''


def test_a_torchscript_archive_that_would_run_code_runs_none(tmp_path: Path) -> None:
    archive, target = tmp_path / "evil.pt", tmp_path / "someone-elses-file"
    script = tmp_path / "make_evil.py"  # TorchScript compiles from a source file
    script.write_text(EVIL.replace("{target!r}", repr(str(target))))
    made = subprocess.run([sys.executable, str(script), str(archive)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    # what the stock loader does with it (in a throwaway process): runs the file's code
    target.write_bytes(b"A" * 4096)
    stock = subprocess.run([sys.executable, "-c", f"import torch; torch.jit.load({str(archive)!r})"],
                           capture_output=True, text=True, timeout=120)
    assert stock.returncode == 0 and target.read_bytes() == b"B" * 4096, \
        "the attack did not work as described"
    target.write_bytes(b"A" * 4096)
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_clip(archive)
    assert target.read_bytes() == b"A" * 4096, "reading the archive ran its code"


def _rewrite(src: Path, dst: Path, edit: dict[str, bytes | None]) -> None:
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for info in old.infolist():
            data = edit.get(info.filename.split("/", 1)[1], old.read(info))
            if data is not None:
                new.writestr(info.filename, data)


@pytest.mark.parametrize(("member", "data", "says"), [
    ("data.pkl", b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.",
     "not on the allow-list"),
    ("data.pkl", b"\x80\x02c__torch__.m\nX\nq\x00)Rq\x01.", "not an allowed function"),
    ("data.pkl", b"garbage", "malformed"),
    ("data/0", b"\x00" * 4, "do not match its size"),
    ("data/0", None, "missing"),
])
def test_a_tampered_archive_is_one_clear_refusal(traced_clip: Path, tmp_path: Path,
                                                 member: str, data: bytes | None,
                                                 says: str) -> None:
    tampered = tmp_path / "tampered.pt"
    _rewrite(traced_clip, tampered, {member: data})
    with pytest.raises(CheckpointError, match=says):
        read_state_dict(tampered)


def test_reading_tensors_needs_no_jit(traced_clip: Path) -> None:
    """The reader never compiles: it works with torch.jit unusable."""
    code = ("import torch, sys; torch.jit.load = None; torch.jit._load_for_lite_interpreter = None;"
            "from pathlib import Path; from ml_backend.weights.torchscript import "
            "read_torchscript_tensors as r; print(len(r(Path(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, str(traced_clip)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(read_torchscript_tensors(traced_clip))
