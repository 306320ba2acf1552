"""The allow-list unpickler against each class of hostile file: one CheckpointError line,
quickly, with bounded memory, and nothing in the process changed."""

import io
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from ml_backend.weights import CheckpointError, read_checkpoint, safe_pickle
from ml_backend.weights.safe_pickle import EasyDict, NumpyArrayClass, safe_load
from tests.ml_backend.weights import hostile_pickles as hostile


def _refused(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    assert time.perf_counter() - start < 5, f"{name}: refusing took too long"
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    assert message.startswith(f"cannot load checkpoint {path}: ")
    return message


@pytest.mark.parametrize("name", sorted(hostile.ALL))
def test_every_hostile_pickle_is_one_checkpoint_error_line(tmp_path: Path, name: str) -> None:
    _refused(tmp_path, name, hostile.ALL[name])


def test_build_on_a_class_is_refused_and_leaves_the_class_alone(tmp_path: Path) -> None:
    before = (dict(vars(EasyDict)), dict(vars(NumpyArrayClass)))
    for name in ("build-on-class", "build-on-ndarray-class"):
        assert "BUILD" in _refused(tmp_path, name, hostile.ALL[name])
    assert (dict(vars(EasyDict)), dict(vars(NumpyArrayClass))) == before


def test_numpy_dtype_state_is_validated_not_handed_to_numpy(tmp_path: Path) -> None:
    message = _refused(tmp_path, "dtype", hostile.NUMPY_DTYPE_OVERSIZED)
    assert "numpy dtype state disagrees with its type" in message
    assert "0x" not in message  # nothing read from outside the object comes back


@pytest.mark.parametrize("name", ["stack-underflow", "missing-memo", "append-to-dict",
                                  "unknown-opcode"])
def test_malformed_streams_name_no_python_internals(tmp_path: Path, name: str) -> None:
    message = _refused(tmp_path, name, hostile.ALL[name])
    assert "truncated or corrupt nvidia-pkl file" in message


def test_shared_nesting_is_neither_walked_nor_formatted_exponentially(tmp_path: Path) -> None:
    top = _refused(tmp_path, "top", hostile.shared_nesting(80))
    assert top.endswith("no G_ema network in the pickle (found list)")
    inner = _refused(tmp_path, "inner", hostile.g_ema_holding(hostile.shared_nesting(80)))
    assert inner.endswith("G_ema is not a persisted Generator network")


def test_attacker_built_tuples_are_never_hashed(tmp_path: Path) -> None:
    assert "dict keys must be plain scalars" in _refused(
        tmp_path, "key", hostile.tuple_keyed_dict(80))


def test_claimed_sizes_are_checked_against_the_bytes_present(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        _refused(tmp_path, "bytes", hostile.HUGE_BYTES_CLAIM)
        _refused(tmp_path, "bytearray", hostile.HUGE_BYTEARRAY_CLAIM)
        message = _refused(tmp_path, "storage", hostile.ALL["storage-claims-more"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "tensor storage bytes do not match its size" in message
    assert peak < 20 * 1024 * 1024, f"refusing allocated {peak / 2**20:.0f} MB"


def test_a_tensor_view_must_stay_inside_its_storage(tmp_path: Path) -> None:
    message = _refused(tmp_path, "view", hostile.ALL["view-past-storage"])
    assert "reaches past the end of its storage" in message


def test_a_valid_storage_view_is_rebuilt_exactly() -> None:
    values = torch.arange(6, dtype=torch.float32)
    blob = hostile.storage_blob(numel=6, payload=values.numpy().tobytes())
    data = hostile.tensor_from(blob, offset=1, size=(2, 2), stride=(1, 2))
    tensor = safe_load(io.BytesIO(data))
    assert torch.equal(tensor, values.as_strided((2, 2), (1, 2), 1))


def test_the_work_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_pickle, "MAX_OPCODES", 10_000)
    endless = hostile.program(*([b"N0"] * 20_000), b"N")  # NONE, POP, ... NONE
    assert "more than 10000 operations" in _refused(tmp_path, "ops", endless)


def test_real_snapshots_still_load(tmp_path: Path) -> None:
    """The NVIDIA layout with numpy scalars, EasyDicts and torch storages goes through."""
    from tests.ml_backend import builders

    path = builders.write_nvidia_pkl(tmp_path / "ok.pkl",
                                     builders.nvidia_generator(builders.nvidia_kwargs()))
    ckpt = read_checkpoint(path)
    assert ckpt.config.img_resolution == 32 and ckpt.state_dict


def test_truncating_a_real_snapshot_anywhere_is_one_error(tmp_path: Path) -> None:
    from tests.ml_backend import builders

    full = builders.write_nvidia_pkl(tmp_path / "full.pkl", builders.nvidia_generator(
        builders.nvidia_kwargs())).read_bytes()
    for cut in range(0, len(full), max(1, len(full) // 60)):
        _refused(tmp_path, f"cut{cut}", full[:cut])
