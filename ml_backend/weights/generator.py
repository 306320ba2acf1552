"""Generator checkpoints: the readers, and our own on-disk format.

Three sources, one result (:class:`GeneratorCheckpoint`: config + flat state dict):

* NVIDIA stylegan2-ada-pytorch / stylegan3 network pickles (``.pkl``): read with
  the allow-list unpickler in :mod:`ml_backend.weights.safe_pickle`; architecture from the
  stored init kwargs of ``G_ema``.
* rosinality stylegan2-pytorch ``.pt`` (``{"g_ema", "latent_avg"}``): read with
  ``torch.load(weights_only=True)``; architecture inferred from tensor shapes, so
  widened layouts such as TADNE's need no special case.
* clipgan ``.safetensors``: the weights plus the JSON config in the header
  metadata, so one file always carries the architecture that matches it.

The format is sniffed from the file's first bytes (:mod:`ml_backend.weights.formats`),
never trusted from its name. Every problem surfaces as one :class:`CheckpointError`
naming the file and why.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from ml_backend.files import atomic_write
from ml_backend.stylegan2 import ConfigError, Generator, GeneratorConfig, make_filter
from ml_backend.weights.formats import CheckpointError, load_torch, sniff
from ml_backend.weights.safe_pickle import PersistedModule, safe_load

__all__ = ["GeneratorCheckpoint", "build_generator", "convert_checkpoint", "describe",
           "load_generator", "read_checkpoint", "save_checkpoint"]

log = logging.getLogger(__name__)

SourceFormat = Literal["nvidia-pkl", "rosinality-pt", "clipgan-safetensors"]

FORMAT_NAME = "clipgan-stylegan2"
FORMAT_VERSION = "1"
_META_PREFIX = "clipgan."


@dataclass
class GeneratorCheckpoint:
    """A generator's architecture and weights, independent of the file they came from."""

    config: GeneratorConfig
    state_dict: dict[str, torch.Tensor]
    source_format: SourceFormat
    metadata: dict[str, str] = field(default_factory=dict)  # provenance; "demo" marks demo weights

    @property
    def is_demo(self) -> bool:
        return self.metadata.get("demo") == "true"

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for k, t in self.state_dict.items()
                   if not k.endswith(("noise_const", "w_avg")))


# ---------------------------------------------------------------------------
# Entry points


def read_checkpoint(path: str | os.PathLike[str], *, mapping_lr_multiplier: float = 0.01,
                    ) -> GeneratorCheckpoint:
    """Read any supported checkpoint. ``mapping_lr_multiplier`` only matters for rosinality
    files, which do not store it (their trainer's default is 0.01)."""
    path = Path(path)
    kind = _SOURCE_OF.get(sniff(path))
    if kind is None:
        raise CheckpointError(path, "not a recognised checkpoint (expected an NVIDIA .pkl, a "
                                    "rosinality .pt or a clipgan .safetensors file)")
    try:
        if kind == "nvidia-pkl":
            ckpt = _read_nvidia_pkl(path)
        elif kind == "rosinality-pt":
            ckpt = _read_rosinality_pt(path, mapping_lr_multiplier)
        else:
            ckpt = _read_safetensors(path)
        _validate_against_architecture(ckpt)
    except CheckpointError:
        raise
    except ConfigError as exc:
        raise CheckpointError(path, str(exc)[:300]) from None
    except Exception as exc:  # hostile or broken input: one line, whatever went wrong
        detail = (str(exc).splitlines() or [""])[0][:300]
        raise CheckpointError(path, f"truncated or corrupt {kind} file "
                                    f"({type(exc).__name__}: {detail})") from None
    return ckpt


def build_generator(ckpt: GeneratorCheckpoint, *, device: str | torch.device = "cpu",
                    ) -> Generator:
    """Instantiate the generator with the checkpoint's weights, in eval mode, frozen.

    Built on the meta device and filled with ``assign=True``, so a 117 M-parameter
    model costs no random initialisation that the weights would overwrite anyway.
    """
    with torch.device("meta"):
        generator = Generator(ckpt.config)
    generator.load_state_dict(ckpt.state_dict, strict=True, assign=True)
    generator.synthesis.register_buffer(
        "resample_filter", make_filter(ckpt.config.resample_filter), persistent=False)
    generator = generator.to(device).eval().requires_grad_(False)
    if ckpt.is_demo:
        log.warning("generator uses UNTRAINED DEMO WEIGHTS (%s): pictures will be noise-like "
                    "patterns; configure a real checkpoint for real images",
                    ckpt.metadata.get("name", "demo"))
    return generator


def load_generator(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                   ) -> tuple[Generator, GeneratorCheckpoint]:
    ckpt = read_checkpoint(path)
    return build_generator(ckpt, device=device), ckpt


def save_checkpoint(ckpt: GeneratorCheckpoint, path: str | os.PathLike[str]) -> Path:
    """Write our own format atomically (temp file + rename): no reader ever sees half a file."""
    path = Path(path)
    metadata = {f"{_META_PREFIX}{k}": v for k, v in ckpt.metadata.items()}
    metadata.update({
        f"{_META_PREFIX}format": FORMAT_NAME,
        f"{_META_PREFIX}format_version": FORMAT_VERSION,
        f"{_META_PREFIX}config": ckpt.config.to_json(),
    })
    tensors = {k: v.detach().to(torch.float32).contiguous().cpu()
               for k, v in ckpt.state_dict.items()}
    return atomic_write(path, safetensors_save(tensors, metadata=metadata))


def convert_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                       mapping_lr_multiplier: float = 0.01) -> GeneratorCheckpoint:
    """Read any supported checkpoint and write it in our safetensors format."""
    ckpt = read_checkpoint(src, mapping_lr_multiplier=mapping_lr_multiplier)
    ckpt.metadata.setdefault("converted_from", ckpt.source_format)
    ckpt.metadata.setdefault("source_file", Path(src).name)
    save_checkpoint(ckpt, dst)
    return ckpt


# ---------------------------------------------------------------------------
# Format detection and shared validation


_SOURCE_OF: dict[str, SourceFormat] = {"pickle": "nvidia-pkl", "torch-zip": "rosinality-pt",
                                        "torch-legacy": "rosinality-pt",
                                        "safetensors": "clipgan-safetensors"}


def _expected_shapes(config: GeneratorConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        generator = Generator(config)
    return {k: tuple(v.shape) for k, v in generator.state_dict().items()}


def _validate_against_architecture(ckpt: GeneratorCheckpoint) -> None:
    """The weights must fill the architecture exactly: no missing, extra or misshapen tensor."""
    expected = _expected_shapes(ckpt.config)
    found = ckpt.state_dict
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k[:80]}" for k in found if k not in expected]
    problems += [f"{k} has shape {list(found[k].shape)}, architecture needs {list(shape)}"
                 for k, shape in expected.items()
                 if k in found and tuple(found[k].shape) != shape]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError("weights do not match the stored architecture: "
                         + "; ".join(problems[:5]) + more)
    for key, tensor in found.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{key} is not a floating-point tensor")
        found[key] = tensor.to(torch.float32)


def _check_filter(path: Path, name: str, stored: torch.Tensor, expected: torch.Tensor) -> None:
    if stored.shape != expected.shape or not torch.allclose(stored.float(), expected, atol=1e-6):
        raise CheckpointError(path, f"{name} holds a resampling filter we do not implement")


# ---------------------------------------------------------------------------
# NVIDIA network pickles


_NVIDIA_SYNTHESIS_KEYS = {"channel_base", "channel_max", "num_fp16_res", "conv_clamp",
                          "architecture", "resample_filter", "use_noise", "activation",
                          "fp16_channels_last", "kernel_size"}
_NVIDIA_MAPPING_KEYS = {"num_layers", "lr_multiplier", "layer_features", "embed_features",
                        "activation", "w_avg_beta"}


def _found(data: Any) -> str:
    """What a file held, for a message: a few short key names or a type, never the
    file's objects themselves (formatting those can take unbounded time)."""
    if not isinstance(data, Mapping):
        return type(data).__name__
    keys = sorted(str(k)[:40] for k in list(data)[:10] if isinstance(k, str | int))
    return str(keys) + (" ..." if len(data) > 10 else "")


def _read_nvidia_pkl(path: Path) -> GeneratorCheckpoint:
    with path.open("rb") as f:
        data = safe_load(f)
    if not isinstance(data, dict) or "G_ema" not in data:
        raise CheckpointError(path, f"no G_ema network in the pickle (found {_found(data)})")
    g = data["G_ema"]
    if not isinstance(g, PersistedModule) or g.class_name != "Generator":
        raise CheckpointError(path, "G_ema is not a persisted Generator network")
    synthesis = g.children.get("synthesis")
    if synthesis is None or not any(re.fullmatch(r"b\d+", k) for k in synthesis.children):
        raise CheckpointError(path, "G_ema is not a StyleGAN2 generator (StyleGAN3 and other "
                                    "synthesis networks are not supported)")

    kwargs = g.init_kwargs
    for required in ("z_dim", "w_dim", "img_resolution", "img_channels"):
        if not isinstance(kwargs.get(required), int):
            raise CheckpointError(path, f"G_ema init kwargs lack an integer {required}")
    if kwargs.get("c_dim", 0):
        raise CheckpointError(path, f"conditional generators (c_dim={kwargs['c_dim']}) are not "
                                    "supported: text guidance needs an unconditional model")
    mapping_kw = dict(kwargs.get("mapping_kwargs") or {})
    synthesis_kw = dict(kwargs.get("synthesis_kwargs") or {})
    unknown = sorted((set(mapping_kw) - _NVIDIA_MAPPING_KEYS)
                     | (set(synthesis_kw) - _NVIDIA_SYNTHESIS_KEYS))
    if unknown:
        raise CheckpointError(path, f"G_ema uses options we do not implement: {unknown}")
    for kw in (mapping_kw, synthesis_kw):
        if kw.get("activation", "lrelu") != "lrelu":
            raise CheckpointError(path, f"unsupported activation {kw['activation']!r}")
    if synthesis_kw.get("kernel_size", 3) != 3:
        raise CheckpointError(path, "only 3x3 synthesis convolutions are supported")

    config = GeneratorConfig(
        z_dim=kwargs["z_dim"], w_dim=kwargs["w_dim"], img_resolution=kwargs["img_resolution"],
        img_channels=kwargs["img_channels"],
        mapping_layers=int(mapping_kw.get("num_layers", 8)),
        mapping_features=mapping_kw.get("layer_features"),
        mapping_lr_multiplier=float(mapping_kw.get("lr_multiplier", 0.01)),
        architecture=synthesis_kw.get("architecture", "skip"),
        channel_base=int(synthesis_kw.get("channel_base", 32768)),
        channel_max=int(synthesis_kw.get("channel_max", 512)),
        conv_clamp=synthesis_kw.get("conv_clamp"),
        num_fp16_res=int(synthesis_kw.get("num_fp16_res", 0)),
        resample_filter=tuple(int(t) for t in synthesis_kw.get("resample_filter", (1, 3, 3, 1))),
        use_noise=bool(synthesis_kw.get("use_noise", True)),
    )
    # Freeze the channel table so our file never depends on channel_base arithmetic.
    config = GeneratorConfig.from_dict({**config.to_dict(),
                                        "channels": list(config.channel_table().values())})
    expected_filter = make_filter(config.resample_filter)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in g.tensors().items():
        if key.endswith("resample_filter"):
            _check_filter(path, key, tensor, expected_filter)
            continue
        state[key] = tensor
    return GeneratorCheckpoint(config=config, state_dict=state, source_format="nvidia-pkl",
                               metadata={"source_class": g.class_name})


# ---------------------------------------------------------------------------
# rosinality stylegan2-pytorch


def _read_rosinality_pt(path: Path, mapping_lr_multiplier: float) -> GeneratorCheckpoint:
    # Training snapshots also hold train.py's argparse arguments: a plain attribute bag.
    data = load_torch(path, allowed=[argparse.Namespace])
    if not isinstance(data, Mapping) or not isinstance(data.get("g_ema"), Mapping):
        raise CheckpointError(path, f"no 'g_ema' state dict in the file (found {_found(data)})")
    src: dict[str, torch.Tensor] = dict(data["g_ema"])
    if "style.1.weight" not in src or "input.input" not in src:
        raise CheckpointError(path, "g_ema is not a rosinality StyleGAN2 generator")

    n_mlp = len([k for k in src if re.fullmatch(r"style\.\d+\.weight", k)])
    w_dim, z_dim = src["style.1.weight"].shape
    to_rgbs = len([k for k in src if re.fullmatch(r"to_rgbs\.\d+\.bias", k)])
    resolution = 2 ** (to_rgbs + 2)
    channels = [src["input.input"].shape[1]]
    channels += [src[f"convs.{2 * i}.conv.weight"].shape[1] for i in range(to_rgbs)]
    config = GeneratorConfig(
        z_dim=int(z_dim), w_dim=int(w_dim), img_resolution=resolution,
        mapping_layers=n_mlp, mapping_features=int(src["style.1.weight"].shape[0]),
        mapping_lr_multiplier=mapping_lr_multiplier, channels=tuple(int(c) for c in channels),
    )
    up_kernel = make_filter(config.resample_filter) * 4
    state: dict[str, torch.Tensor] = {}

    def take(dst: str, key: str, reshape: tuple[int, ...] | None = None) -> None:
        if key not in src:
            raise CheckpointError(path, f"g_ema lacks {key}")
        t = src.pop(key)
        state[dst] = t.reshape(reshape) if reshape is not None else t

    for i in range(n_mlp):
        take(f"mapping.fc{i}.weight", f"style.{i + 1}.weight")
        take(f"mapping.fc{i}.bias", f"style.{i + 1}.bias")

    def styled_conv(dst: str, key: str, noise_key: str, res: int) -> None:
        w = src.get(f"{key}.conv.weight")
        if w is None:
            raise CheckpointError(path, f"g_ema lacks {key}.conv.weight")
        take(f"{dst}.weight", f"{key}.conv.weight", tuple(w.shape[1:]))
        take(f"{dst}.affine.weight", f"{key}.conv.modulation.weight")
        take(f"{dst}.affine.bias", f"{key}.conv.modulation.bias")
        take(f"{dst}.noise_strength", f"{key}.noise.weight", ())
        take(f"{dst}.bias", f"{key}.activate.bias")
        take(f"{dst}.noise_const", noise_key, (res, res))
        blur = src.pop(f"{key}.conv.blur.kernel", None)
        if blur is not None:
            _check_filter(path, f"{key}.conv.blur.kernel", blur, up_kernel)

    def to_rgb(dst: str, key: str) -> None:
        w = src.get(f"{key}.conv.weight")
        if w is None:
            raise CheckpointError(path, f"g_ema lacks {key}.conv.weight")
        take(f"{dst}.weight", f"{key}.conv.weight", tuple(w.shape[1:]))
        take(f"{dst}.affine.weight", f"{key}.conv.modulation.weight")
        take(f"{dst}.affine.bias", f"{key}.conv.modulation.bias")
        take(f"{dst}.bias", f"{key}.bias", (-1,))
        kernel = src.pop(f"{key}.upsample.kernel", None)
        if kernel is not None:
            _check_filter(path, f"{key}.upsample.kernel", kernel, up_kernel)

    take("synthesis.b4.const", "input.input", tuple(src["input.input"].shape[1:]))
    styled_conv("synthesis.b4.conv1", "conv1", "noises.noise_0", 4)
    to_rgb("synthesis.b4.torgb", "to_rgb1")
    for i in range(to_rgbs):
        res = 2 ** (i + 3)
        styled_conv(f"synthesis.b{res}.conv0", f"convs.{2 * i}", f"noises.noise_{2 * i + 1}", res)
        styled_conv(f"synthesis.b{res}.conv1", f"convs.{2 * i + 1}",
                    f"noises.noise_{2 * i + 2}", res)
        to_rgb(f"synthesis.b{res}.torgb", f"to_rgbs.{i}")
    if src:
        leftover = sorted(src)
        raise CheckpointError(path, f"g_ema has tensors this architecture does not use: "
                                    f"{leftover[:5]}")

    metadata: dict[str, str] = {}
    latent_avg = data.get("latent_avg")
    if isinstance(latent_avg, torch.Tensor) and latent_avg.numel() == w_dim:
        state["mapping.w_avg"] = latent_avg.reshape(-1).to(torch.float32)
    else:
        state["mapping.w_avg"] = _estimate_w_avg(config, state)
        metadata["w_avg"] = "estimated from 10000 mapped samples (file has no latent_avg)"
    return GeneratorCheckpoint(config=config, state_dict=state, source_format="rosinality-pt",
                               metadata=metadata)


def _estimate_w_avg(config: GeneratorConfig, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean of w over a fixed set of z: the truncation centre when the file has none."""
    from ml_backend.stylegan2 import MappingNetwork

    mapping = MappingNetwork(z_dim=config.z_dim, w_dim=config.w_dim,
                             num_layers=config.mapping_layers,
                             features=config.mapping_features or config.w_dim,
                             lr_multiplier=config.mapping_lr_multiplier)
    mapping.load_state_dict({k.removeprefix("mapping."): v for k, v in state.items()
                             if k.startswith("mapping.")} | {"w_avg": torch.zeros(config.w_dim)})
    z = torch.randn(10_000, config.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return mapping(z).mean(dim=0)


# ---------------------------------------------------------------------------
# Our own format


def _read_safetensors(path: Path) -> GeneratorCheckpoint:
    with safe_open(path, framework="pt", device="cpu") as f:
        raw_meta = f.metadata() or {}
        if raw_meta.get(f"{_META_PREFIX}format") != FORMAT_NAME:
            raise CheckpointError(path, "safetensors file is not a clipgan generator "
                                        "(no clipgan.format metadata)")
        version = raw_meta.get(f"{_META_PREFIX}format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(path, f"format version {version!r} is not supported "
                                        f"(this build reads {FORMAT_VERSION})")
        config = GeneratorConfig.from_json(raw_meta.get(f"{_META_PREFIX}config", ""))
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    reserved = {"format", "format_version", "config"}
    metadata = {k.removeprefix(_META_PREFIX): v for k, v in raw_meta.items()
                if k.startswith(_META_PREFIX) and k.removeprefix(_META_PREFIX) not in reserved}
    return GeneratorCheckpoint(config=config, state_dict=state,
                               source_format="clipgan-safetensors", metadata=metadata)


def describe(ckpt: GeneratorCheckpoint) -> dict[str, Any]:
    """A JSON-friendly summary for ``clipgan info`` and the model-info endpoints."""
    return {
        "format": ckpt.source_format,
        "demo_weights": ckpt.is_demo,
        "parameters": ckpt.num_parameters,
        "resolution": ckpt.config.img_resolution,
        "num_ws": ckpt.config.num_ws,
        "config": ckpt.config.to_dict(),
        "metadata": dict(ckpt.metadata),
    }
