"""The Serve app in local testing mode (no cluster) and the operator files."""

import asyncio
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ServeDeploySchema

from ml_backend.protocol import Failure, GenerationRequest, Progress, Result
from ml_backend.serve import app_builder, build_app, deployment_options
from ml_backend.settings import MLSettings
from tests.servers import CLUSTER_SECRET

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def handle(demo_data_dir: Path) -> Iterator[DeploymentHandle]:
    yield serve.run(build_app(MLSettings(data_dir=demo_data_dir, device="cpu")),
                    name="clipgan-local", _local_testing_mode=True)


async def collect(handle: DeploymentHandle, request: GenerationRequest) -> list:
    return [m async for m in handle.options(stream=True).generate.remote(request)]


def test_generate_streams_progress_then_result(handle: DeploymentHandle) -> None:
    messages = asyncio.run(collect(handle, GenerationRequest(prompt="smile", steps=4, seed=2)))
    assert [type(m) for m in messages] == [Progress] * 4 + [Result]
    assert [m.step for m in messages[:-1]] == [1, 2, 3, 4]
    assert messages[-1].png.startswith(b"\x89PNG") and messages[-1].demo_weights


def test_sample_and_info(handle: DeploymentHandle) -> None:
    async def run() -> tuple:
        return (await handle.sample.remote(GenerationRequest(seed="Asuka")),
                await handle.info.remote())

    sample, info = asyncio.run(run())
    assert isinstance(sample, Result) and sample.steps == 0
    assert info["models"]["default"]["demo_weights"] is True
    assert info["clip"]["demo_weights"] is True and info["batch_slots"] == 8
    assert info["precision"] == "fp32"  # auto on a CPU replica


def test_bad_requests_end_the_stream_with_a_failure(handle: DeploymentHandle) -> None:
    unknown = asyncio.run(collect(handle, GenerationRequest(prompt="x", model="pokemon")))
    assert unknown == [Failure(code="invalid_request",
                               message="unknown model 'pokemon'; available models: default")]
    assert not unknown[0].retryable
    too_long = asyncio.run(collect(handle, GenerationRequest(prompt="word " * 90)))
    assert too_long[0].code == "invalid_request" and "tokens long" in too_long[0].message
    bad_dict = asyncio.run(collect(handle, {"prompt": "x", "steps": 0}))
    assert bad_dict[0].code == "invalid_request" and "steps" in bad_dict[0].message


def test_caller_cancel_stops_the_search(handle: DeploymentHandle) -> None:
    async def run() -> dict:
        stream = handle.options(stream=True).generate.remote(
            GenerationRequest(prompt="smile", steps=500, seed=1))
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 2:
                stream.cancel()
                break
        for _ in range(100):
            load = (await handle.info.remote())["load"]["default"]
            if load["active"] == 0 and load["pending"] == 0:
                return load
            await asyncio.sleep(0.1)
        return load

    assert asyncio.run(run())["active"] == 0


def test_health_check_passes(handle: DeploymentHandle) -> None:
    handle.check_health.remote().result(timeout_s=60)


def test_deployment_options_follow_settings() -> None:
    opts = deployment_options(MLSettings(batch_slots=4, min_replicas=0, max_replicas=3,
                                         replica_gpus=1, graceful_shutdown_timeout_s=1200))
    assert opts["max_ongoing_requests"] == 4
    assert opts["ray_actor_options"]["num_gpus"] == 1
    assert opts["autoscaling_config"]["min_replicas"] == 0
    assert opts["autoscaling_config"]["target_ongoing_requests"] == 4
    assert opts["graceful_shutdown_timeout_s"] == 1200


@pytest.mark.parametrize("secret", ["short", " " * 40, "a" * 40, "\t\n" * 20])
def test_ingress_refuses_to_start_without_a_real_secret(secret: str) -> None:
    with pytest.raises(ValueError, match="CLIPGAN_INGRESS_SECRET must be set to at least 32"):
        MLSettings(ingress_enabled=True, ingress_secret=secret)


@pytest.mark.parametrize("secret", ["", " " * 40, "x" * 31])
def test_the_ingress_class_itself_fails_closed(secret: str) -> None:
    """Built without settings (a test, another app), it still refuses a weak secret:
    with "" it would have accepted 'Authorization: Bearer ' from anyone."""
    from ml_backend.serve import GeneratorIngress

    with pytest.raises(ValueError, match="shared secret of at least 32"):
        GeneratorIngress(None, secret)  # type: ignore[arg-type]


# --- operator files ---------------------------------------------------------------------


def _ray_cluster_schema() -> dict:
    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


def test_cluster_yaml_is_valid_for_ray_up() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, _ray_cluster_schema())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu_types = {k: v for k, v in types.items() if v["resources"].get("GPU")}
    assert all(t["min_workers"] == 0 for t in gpu_types.values())
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
               for t in gpu_types.values())
    assert any("InstanceMarketOptions" not in t["node_config"] for t in gpu_types.values())
    assert config["idle_timeout_minutes"] > 0


def test_cluster_schema_check_is_not_vacuous() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_spot"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _ray_cluster_schema())


def test_serve_config_is_valid_and_matches_the_builder(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    assert config["proxy_location"] == "Disabled"
    app = config["applications"][0]
    assert app["import_path"] == "ml_backend.serve:app_builder"
    args = {**app["args"], "data_dir": str(tmp_path)}
    built = app_builder(args)  # binds only: models load in the replica
    assert built is not None
    derived = deployment_options(MLSettings(**args))
    declared = app["deployments"][0]
    assert declared["max_ongoing_requests"] == derived["max_ongoing_requests"]
    assert declared["autoscaling_config"]["min_replicas"] == 0
    for key in ("max_replicas", "target_ongoing_requests", "downscale_to_zero_delay_s"):
        assert declared["autoscaling_config"][key] == derived["autoscaling_config"][key]
    assert declared["graceful_shutdown_timeout_s"] >= 600
    assert os.path.isabs(args["models"]["anime"]["checkpoint"])


def test_start_options_keep_the_proxy_off_by_default() -> None:
    from ml_backend.serve import start_options

    assert start_options(MLSettings()) == {"proxy_location": "Disabled"}
    private = start_options(MLSettings(ingress_enabled=True, ingress_secret=CLUSTER_SECRET,
                                       ingress_host="10.0.0.5", ingress_port=9000))
    assert private["http_options"]["host"] == "10.0.0.5"
    assert private["http_options"]["port"] == 9000


def test_user_config_swaps_models_live(demo_data_dir: Path, tmp_path: Path) -> None:
    from ml_backend.serve import GeneratorDeployment
    from ml_backend.weights import save_checkpoint
    from ml_backend.weights.demo import build_demo_generator

    second = save_checkpoint(build_demo_generator(), tmp_path / "pokemon.safetensors")
    replica = GeneratorDeployment({"data_dir": str(demo_data_dir), "device": "cpu"})
    assert list(asyncio.run(replica.info())["models"]) == ["default"]
    replica.reconfigure({"models": {"anime": {"psi": 1.1},
                                    "pokemon": {"checkpoint": str(second), "psi": 0.8}}})
    info = asyncio.run(replica.info())
    assert list(info["models"]) == ["anime", "pokemon"]
    assert info["models"]["pokemon"]["default_psi"] == 0.8
    sample = asyncio.run(replica.sample(GenerationRequest(seed=1, model="pokemon")))
    assert isinstance(sample, Result) and sample.psi == 0.8
