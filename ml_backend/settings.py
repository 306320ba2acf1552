"""Settings of the ML side, read from ``CLIPGAN_*`` environment variables or ``.env``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MLSettings", "ModelSpec", "PrecisionSetting", "UnknownModelError"]

# what ml_backend.precision resolves; named here so settings never import torch
PrecisionSetting = Literal["auto", "fp32", "bf16", "fp16"]


class ModelSpec(BaseModel):
    """One servable generator: where its weights are and its default creativity."""

    checkpoint: Path | None = Field(None, description="Generator file; unset: demo weights.")
    psi: float = Field(1.0, ge=0.0, le=2.0, description="Default truncation psi.")
    description: str = ""


class UnknownModelError(ValueError):
    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(f"unknown model {name!r}; available models: {', '.join(available)}")


class MLSettings(BaseSettings):
    """Where models come from and how the engine runs. Unset paths mean demo weights."""

    model_config = SettingsConfigDict(env_prefix="CLIPGAN_", env_file=".env", extra="ignore",
                                      protected_namespaces=())

    data_dir: Path = Field(Path("data"), description="Demo weights, caches and local results.")
    generator_checkpoint: Path | None = Field(
        None, description="The 'default' model's checkpoint (.pkl, .pt or .safetensors).")
    default_psi: float = Field(1.0, ge=0.0, le=2.0, description="The 'default' model's psi.")
    models: dict[str, ModelSpec] = Field(default_factory=dict, description=(
        "Named generators as JSON, e.g. {\"anime\": {\"checkpoint\": \"/m/a.safetensors\", "
        "\"psi\": 1.1}}; the first is the default."))
    clip_checkpoint: Path | None = Field(None, description="CLIP file; unset: demo CLIP.")
    upscaler_checkpoint: Path | None = Field(
        None, description="Real-ESRGAN RRDBNet x4 .pth; unset: Lanczos upscaling.")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'.")
    batch_slots: int = Field(8, ge=1, le=64, description="Searches sharing one GPU pass.")
    precision: PrecisionSetting = Field("auto", description=(
        "Search steps and candidate scoring: 'auto' (bf16 autocast on CUDA, fp16 with loss "
        "scaling where bf16 is missing, fp32 on CPU), 'fp32', 'bf16' or 'fp16'."))

    # --- Ray Serve deployment (see serve_config.yaml for the cluster values) ---------
    replica_gpus: float = Field(0.0, ge=0, description="GPUs per replica: 1 on GPU clusters.")
    replica_cpus: float = Field(1.0, ge=0, description="CPUs per replica.")
    min_replicas: int = Field(1, ge=0, description="0 lets the app scale to zero when idle.")
    max_replicas: int = Field(4, ge=1)
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(300.0, ge=0)
    downscale_to_zero_delay_s: float = Field(900.0, ge=0, description=(
        "Idle time before the last replica goes (only with min_replicas 0)."))
    max_queued_requests: int = Field(64, ge=1, description="Per caller; beyond it Serve "
                                     "answers 'back pressure' at once instead of queueing.")
    graceful_shutdown_timeout_s: float = Field(900.0, gt=0, description=(
        "How long a stopping replica may finish running jobs; longer than the longest job."))
    ingress_enabled: bool = Field(False, description=(
        "Also serve an HTTP ingress for a web backend on another machine."))
    ingress_secret: SecretStr | None = Field(None, description=(
        "Shared secret the HTTP ingress requires (>= 32 characters)."))
    ingress_host: str = Field("127.0.0.1", description="Private address the ingress binds.")
    ingress_port: int = Field(8100, ge=1, le=65535)

    @model_validator(mode="after")
    def _ingress_needs_a_secret(self) -> MLSettings:
        if self.ingress_enabled:
            secret = self.ingress_secret.get_secret_value() if self.ingress_secret else ""
            if len(secret.strip()) < 32 or len(set(secret)) < 8:
                raise ValueError("CLIPGAN_INGRESS_SECRET must be set to at least 32 characters "
                                 "when the HTTP ingress is enabled (e.g. `openssl rand -hex 32`)")
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas cannot exceed max_replicas")
        return self

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def model_registry(self) -> dict[str, ModelSpec]:
        """Name -> spec; 'default' always resolves (to the first named model if any)."""
        registry = dict(self.models)
        if not registry:
            registry["default"] = ModelSpec(checkpoint=self.generator_checkpoint,
                                            psi=self.default_psi)
        return registry

    def resolve_model(self, name: str) -> tuple[str, ModelSpec]:
        registry = self.model_registry()
        if name == "default" and "default" not in registry:
            name = next(iter(registry))
        if name not in registry:
            raise UnknownModelError(name, sorted(registry))
        return name, registry[name]
