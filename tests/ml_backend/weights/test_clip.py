"""CLIP from a local file: refusals name the file and say why."""

from pathlib import Path

import pytest

from ml_backend.weights import CheckpointError, load_clip


def test_clip_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_clip(tmp_path / "ViT-B-32.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_clip(junk)
