"""The Serve app on this machine, for ``clipgan serve`` / ``make run``.

Two ways to run the same deployment class behind the same handle API:

* ``ray``: a private local Ray cluster (``address="local"``: never joins a cluster
  that happens to run here), Serve with no HTTP proxy, replicas in their own worker
  processes exactly as on the GPU cluster. A replica crash is recovered by Serve;
  the caller sees the typed failure and retries. GPUs Ray finds are used.
* ``in-process``: Serve's local testing mode, the replica lives in this process.
  No Ray to start (ready in ~6 s here instead of ~16 s) and no extra processes;
  for tests and quick hacks.

Both are context managers so that Ctrl-C, an exception or a normal exit all take
the cluster down: the next start finds no leftover Ray processes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

from ml_backend.settings import MLSettings

__all__ = ["APP_NAME", "GeneratorMode", "LocalClusterError", "local_generator"]

log = logging.getLogger(__name__)

APP_NAME = "clipgan"


class LocalClusterError(RuntimeError):
    """The app cannot run on this machine as configured; the message says what to change."""


class GeneratorMode(StrEnum):
    ray = "ray"
    in_process = "in-process"


def _with_local_gpus(settings: MLSettings, gpus_found: float) -> MLSettings:
    """Give each replica a GPU when Ray found one and the operator did not choose.

    Ray hides every GPU from an actor that reserved none, so without this a laptop
    with a GPU would silently run the generator on its CPU.
    """
    if "replica_gpus" in settings.model_fields_set or settings.device == "cpu":
        return settings
    if gpus_found < 1:
        return settings
    return settings.model_copy(update={"replica_gpus": 1.0})


@contextmanager
def local_generator(settings: MLSettings, mode: GeneratorMode) -> Iterator[object]:
    """Run the Serve app here and yield its ``DeploymentHandle``; tear it all down after."""
    from ray import serve

    from ml_backend.serve import build_app, start_options

    if mode is GeneratorMode.in_process:
        handle = serve.run(build_app(settings), name=APP_NAME, _local_testing_mode=True)
        yield handle
        return

    import ray

    try:
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    except Exception as exc:  # Ray's start-up errors have no common type
        raise LocalClusterError(f"could not start a local Ray ({type(exc).__name__}: {exc}); "
                                "`clipgan serve --generator in-process` needs none") from exc
    try:
        resources = ray.cluster_resources()
        settings = _with_local_gpus(settings, resources.get("GPU", 0.0))
        _check_fits(settings, resources)
        log.info("local Ray started; replica logs under /tmp/ray/session_latest/logs")
        serve.start(**start_options(settings))
        handle = serve.run(build_app(settings), name=APP_NAME, route_prefix=None)
        yield handle
    finally:
        # ray.shutdown() ends the whole private cluster, Serve's controller and
        # replicas included; serve.shutdown() first would only add noisy retries
        # from the handle's long poll. Jobs still running are re-queued by their
        # lease, so nothing needs a graceful drain here.
        ray.shutdown()


def _check_fits(settings: MLSettings, resources: dict[str, float]) -> None:
    """Refuse a replica this machine can never place: Serve would wait for it forever."""
    for unit, wanted, setting in (("GPU", settings.replica_gpus, "CLIPGAN_REPLICA_GPUS"),
                                  ("CPU", settings.replica_cpus, "CLIPGAN_REPLICA_CPUS")):
        have = resources.get(unit, 0.0)
        if wanted > have:
            raise LocalClusterError(
                f"a generator replica needs {wanted:g} {unit} but this machine has {have:g}; "
                f"lower {setting}")
