"""Checkpoint readers: equal output to the reference implementations, and clear refusals."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from ml_backend.weights import (
    CheckpointError,
    build_generator,
    convert_checkpoint,
    load_generator,
    read_checkpoint,
)
from tests.ml_backend import builders
from tests.ml_backend.reference import nvidia_math

TOLERANCE = 1e-4  # max abs difference in fp32 on CPU, as the issue asks


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture
def rosinality(tmp_path: Path):
    g = builders.rosinality_generator(size=32, style_dim=32, n_mlp=2)
    latent_avg = 0.3 * torch.randn(32, generator=torch.Generator().manual_seed(5))
    path = builders.write_rosinality_pt(tmp_path / "550000.pt", g, latent_avg)
    return path, g, latent_avg


@pytest.mark.parametrize(("architecture", "conv_clamp"), [
    ("skip", None), ("skip", 256), ("orig", 0.5), ("resnet", 256),
])
def test_nvidia_pickle_matches_reference(tmp_path: Path, architecture: str, conv_clamp) -> None:
    kwargs = builders.nvidia_kwargs(architecture=architecture, conv_clamp=conv_clamp)
    tree = builders.nvidia_generator(kwargs, seed=3)
    path = builders.write_nvidia_pkl(tmp_path / "network-snapshot-000100.pkl", tree)
    generator, ckpt = load_generator(path)
    assert ckpt.source_format == "nvidia-pkl"
    assert ckpt.config.architecture == architecture and ckpt.config.conv_clamp == conv_clamp
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    for psi in (0.7, 1.0, 1.6):
        expected = nvidia_math.generate(kwargs, tree.flat(), z, psi=psi)
        assert _max_diff(generator(z, psi=psi), expected) <= TOLERANCE


def test_nvidia_pickle_takes_g_ema_not_g(tmp_path: Path) -> None:
    kwargs = builders.nvidia_kwargs()
    tree = builders.nvidia_generator(kwargs, seed=4)
    ckpt = read_checkpoint(builders.write_nvidia_pkl(tmp_path / "n.pkl", tree))
    assert torch.equal(ckpt.state_dict["mapping.w_avg"], tree.flat()["mapping.w_avg"])


def test_rosinality_matches_reference(rosinality) -> None:
    path, reference, latent_avg = rosinality
    generator, ckpt = load_generator(path)
    assert ckpt.source_format == "rosinality-pt"
    assert torch.equal(generator.w_avg, latent_avg)
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    for psi in (0.5, 1.0, 1.8):
        w = reference.style(z)
        w_plus = (latent_avg + psi * (w - latent_avg))[:, None].expand(-1, reference.n_latent, -1)
        with torch.no_grad():
            expected = reference(w_plus)
        assert _max_diff(generator(z, psi=psi), expected) <= TOLERANCE


def test_rosinality_tadne_style_widened_channels(tmp_path: Path) -> None:
    """TADNE doubles the stock channel table; the reader infers it from the shapes."""
    widened = {4: 128, 8: 128, 16: 128, 32: 64}
    g = builders.rosinality_generator(size=32, style_dim=48, n_mlp=4, channels=widened)
    path = builders.write_rosinality_pt(tmp_path / "tadne-mini.pt", g, torch.zeros(48))
    generator, ckpt = load_generator(path)
    assert ckpt.config.channels == (128, 128, 128, 64)
    assert ckpt.config.mapping_layers == 4 and ckpt.config.w_dim == 48
    w_plus = torch.randn(2, 1, 48).expand(-1, g.n_latent, -1)
    with torch.no_grad():
        assert _max_diff(generator.synthesize(w_plus), g(w_plus)) <= TOLERANCE


def test_rosinality_training_snapshot_and_legacy_format(tmp_path: Path) -> None:
    g = builders.rosinality_generator()
    snap = builders.write_rosinality_pt(tmp_path / "snap.pt", g, torch.zeros(32),
                                        training_snapshot=True)
    legacy = builders.write_rosinality_pt(tmp_path / "old.pt", g, torch.zeros(32), legacy=True)
    for path in (snap, legacy):
        assert read_checkpoint(path).config.img_resolution == 32


def test_rosinality_without_latent_avg_estimates_it(tmp_path: Path) -> None:
    g = builders.rosinality_generator()
    path = tmp_path / "no-avg.pt"
    torch.save({"g_ema": g.state_dict()}, path)
    ckpt = read_checkpoint(path)
    expected = g.style(torch.randn(10_000, 32, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(ckpt.state_dict["mapping.w_avg"], expected.mean(0), atol=1e-5)
    assert "estimated" in ckpt.metadata["w_avg"]


@pytest.mark.parametrize("source", ["pkl", "pt"])
def test_convert_round_trip_is_exact(tmp_path: Path, rosinality, source: str) -> None:
    if source == "pkl":
        src = builders.write_nvidia_pkl(tmp_path / "n.pkl", builders.nvidia_generator(
            builders.nvidia_kwargs(conv_clamp=256, architecture="resnet")))
    else:
        src = rosinality[0]
    original, _ = load_generator(src)
    out = tmp_path / "model.safetensors"
    convert_checkpoint(src, out)
    assert out.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    converted, ckpt = load_generator(out)
    assert ckpt.source_format == "clipgan-safetensors"
    assert ckpt.metadata["converted_from"] == ("nvidia-pkl" if source == "pkl" else "rosinality-pt")
    z = torch.randn(2, 32)
    assert torch.equal(original(z, psi=1.1), converted(z, psi=1.1))


def test_format_is_sniffed_not_taken_from_the_name(tmp_path: Path, rosinality) -> None:
    misnamed = tmp_path / "model.pkl"
    misnamed.write_bytes(rosinality[0].read_bytes())
    assert read_checkpoint(misnamed).source_format == "rosinality-pt"


# --- bad input -------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pkl: no such file"):
        read_checkpoint(tmp_path / "nope.pkl")


def test_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [b"hello, I am a text file\n", b"\x89PNG\r\n\x1a\n" + b"0" * 64,
                                     b""])
def test_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"model\.pt: not a recognised"):
        read_checkpoint(path)


@pytest.mark.parametrize("kind", ["pkl", "pt", "safetensors"])
def test_truncated_files(tmp_path: Path, rosinality, kind: str) -> None:
    if kind == "pkl":
        full = builders.write_nvidia_pkl(tmp_path / "full.pkl",
                                         builders.nvidia_generator(builders.nvidia_kwargs()))
    elif kind == "pt":
        full = rosinality[0]
    else:
        full = tmp_path / "full.safetensors"
        convert_checkpoint(rosinality[0], full)
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"cut\.{kind}: truncated or corrupt"):
        read_checkpoint(cut)


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_naming_os_system_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _RunsShell(marker)}))
    with pytest.raises(CheckpointError, match=r"evil\.pkl: .*refusing to load global posix\.system"):
        read_checkpoint(path)
    assert not marker.exists()


def test_torch_file_with_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "x": _RunsShell(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused by the weights-only loader"):
        read_checkpoint(path)
    assert not marker.exists()


def test_stored_module_source_is_never_executed(tmp_path: Path, capfd) -> None:
    tree = builders.nvidia_generator(builders.nvidia_kwargs())
    path = builders.write_nvidia_pkl(tmp_path / "n.pkl", tree,
                                     module_src=f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    read_checkpoint(path)
    assert not (tmp_path / "ran").exists()


def test_conditional_and_wrong_shapes_are_explained(tmp_path: Path) -> None:
    cond = builders.nvidia_generator(builders.nvidia_kwargs(c_dim=10))
    with pytest.raises(CheckpointError, match=r"conditional generators \(c_dim=10\)"):
        read_checkpoint(builders.write_nvidia_pkl(tmp_path / "cond.pkl", cond))
    tree = builders.nvidia_generator(builders.nvidia_kwargs())
    tree.children["synthesis"].children["b8"].children["conv1"].params["weight"] = torch.zeros(5, 5, 3, 3)
    with pytest.raises(CheckpointError, match=r"synthesis\.b8\.conv1\.weight has shape \[5, 5, 3, 3\]"):
        read_checkpoint(builders.write_nvidia_pkl(tmp_path / "bad.pkl", tree))


def test_pickle_without_g_ema(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match=r"no G_ema network in the pickle \(found \['weights'\]\)"):
        read_checkpoint(path)


def test_foreign_safetensors_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a clipgan generator"):
        read_checkpoint(path)


def test_build_on_requested_device(rosinality) -> None:
    ckpt = read_checkpoint(rosinality[0])
    generator = build_generator(ckpt, device="cpu")
    assert all(not p.requires_grad for p in generator.parameters())
    assert generator.synthesis.resample_filter.device.type == "cpu"
