"""Settings of the ML side, read from ``CLIPGAN_*`` environment variables or ``.env``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MLSettings(BaseSettings):
    """Where models come from. Unset checkpoint paths mean the built-in demo weights."""

    model_config = SettingsConfigDict(env_prefix="CLIPGAN_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Demo weights, caches and local results.")
    generator_checkpoint: Path | None = Field(
        None, description="StyleGAN2 checkpoint (.pkl, .pt or .safetensors); unset: demo weights.")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'.")

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
