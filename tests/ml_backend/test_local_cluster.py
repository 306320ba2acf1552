"""Choices `clipgan serve` makes for the local Ray (the run itself: tests/clipgan)."""

import pytest

from ml_backend.local_cluster import LocalClusterError, _check_fits, _with_local_gpus
from ml_backend.settings import MLSettings


def test_a_gpu_ray_finds_is_given_to_the_replica() -> None:
    assert _with_local_gpus(MLSettings(), gpus_found=1.0).replica_gpus == 1.0


def test_no_gpu_found_keeps_the_replica_on_the_cpu() -> None:
    assert _with_local_gpus(MLSettings(), gpus_found=0.0).replica_gpus == 0.0


def test_an_operators_choice_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPGAN_REPLICA_GPUS", "0")
    assert _with_local_gpus(MLSettings(), gpus_found=2.0).replica_gpus == 0.0
    assert _with_local_gpus(MLSettings(device="cpu"), gpus_found=2.0).replica_gpus == 0.0



def test_a_replica_asking_for_a_missing_gpu_is_refused_with_the_setting_to_change() -> None:
    with pytest.raises(LocalClusterError, match="needs 1 GPU but this machine has 0; "
                                                "lower CLIPGAN_REPLICA_GPUS"):
        _check_fits(MLSettings(replica_gpus=1), {"CPU": 2.0})
    _check_fits(MLSettings(replica_gpus=1), {"CPU": 2.0, "GPU": 1.0})  # fits: no error
