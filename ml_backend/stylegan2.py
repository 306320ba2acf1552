"""StyleGAN2 generator in pure PyTorch (no compiled extensions).

The layer layout and parameter names follow the published StyleGAN2 design as
NVIDIA's PyTorch release lays out its state dict (``mapping.fc0.weight``,
``synthesis.b64.conv0.affine.bias`` ...), so converting a checkpoint is a rename
plus a shape check rather than a rewrite; the code itself is our own.

Everything the architecture needs is in :class:`GeneratorConfig`, which the
checkpoint readers fill from what they find in the file, so the config cannot
drift from the weights. The generator is batched, runs on CPU and CUDA, and is
differentiable with respect to W / W+ (the latent search optimises through it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConfigError", "Generator", "GeneratorConfig", "MappingNetwork", "SynthesisLayer",
    "SynthesisNetwork", "make_filter", "modulated_conv2d", "tadne_config", "to_uint8_images",
    "upfirdn2d", "upsample2d",
]

Architecture = Literal["orig", "skip", "resnet"]
NoiseMode = Literal["const", "random", "none"]

# Far above any published StyleGAN2 (TADNE: 1024-d latents, 1024 channels, 512 px), so
# only a broken or hostile file's config is refused before anything is allocated.
_MAX_SIZES = {"z_dim": 8192, "w_dim": 8192, "img_channels": 4, "mapping_layers": 32,
              "channel_base": 1 << 20, "channel_max": 8192}
_MAX_RESOLUTION = 4096
_MAX_CHANNELS = 8192
_LRELU_SLOPE = 0.2
_LRELU_GAIN = math.sqrt(2.0)  # keeps activations at unit variance through leaky ReLU
_ARCHITECTURES = ("orig", "skip", "resnet")
_NOISE_MODES = ("const", "random", "none")


class ConfigError(ValueError):
    """An architecture description that no generator can be built from."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of one StyleGAN2 generator; serialisable to JSON.

    ``channels`` (an explicit table, 4 px first) wins over ``channel_base`` /
    ``channel_max``; checkpoint readers always fill it from the stored shapes.
    """

    z_dim: int = 512                        # input latent size
    w_dim: int = 512                        # intermediate latent size
    img_resolution: int = 256               # output side in pixels, a power of two >= 4
    img_channels: int = 3                   # 3 for RGB
    mapping_layers: int = 8                 # fully connected layers in the mapping network
    mapping_features: int | None = None     # hidden width of the mapping network (None: w_dim)
    mapping_lr_multiplier: float = 0.01     # equalised learning-rate gain of the mapping layers
    architecture: Architecture = "skip"     # how RGB outputs combine across resolutions
    channel_base: int = 32768               # channels at resolution r: min(base // r, max)
    channel_max: int = 512
    channels: tuple[int, ...] | None = None  # explicit table, one entry per resolution from 4 px
    conv_clamp: float | None = None         # clamp conv outputs to +-this (NVIDIA trains with 256)
    num_fp16_res: int = 0                   # top resolutions that run in fp16 on CUDA
    resample_filter: tuple[int, ...] = (1, 3, 3, 1)  # low-pass filter for upsampling
    use_noise: bool = True                  # per-layer noise inputs

    def __post_init__(self) -> None:
        def fail(reason: str) -> None:
            raise ConfigError(f"invalid generator config: {reason}")

        for name, most in _MAX_SIZES.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                fail(f"{name} must be an integer from 1 to {most}")
        res = self.img_resolution
        if not isinstance(res, int) or res < 4 or res > _MAX_RESOLUTION or res & (res - 1):
            fail(f"img_resolution must be a power of two from 4 to {_MAX_RESOLUTION}")
        if self.architecture not in _ARCHITECTURES:
            fail(f"architecture must be one of {_ARCHITECTURES}, got {self.architecture!r}")
        if self.mapping_features is not None and not (
                isinstance(self.mapping_features, int) and 1 <= self.mapping_features <= 8192):
            fail("mapping_features must be an integer from 1 to 8192, or null")
        if not isinstance(self.mapping_lr_multiplier, int | float) or \
                not self.mapping_lr_multiplier > 0:
            fail("mapping_lr_multiplier must be > 0")
        if self.conv_clamp is not None and not (isinstance(self.conv_clamp, int | float)
                                                and self.conv_clamp > 0):
            fail("conv_clamp must be > 0 or null")
        if not 0 <= self.num_fp16_res <= self.num_resolutions:
            fail(f"num_fp16_res must be between 0 and {self.num_resolutions}")
        if not 2 <= len(self.resample_filter) <= 16 or sum(self.resample_filter) <= 0:
            fail("resample_filter needs 2 to 16 taps with a positive sum")
        if self.channels is not None:
            if len(self.channels) != self.num_resolutions:
                fail(f"channels has {len(self.channels)} entries, expected one per resolution "
                     f"from 4 to {res} px ({self.num_resolutions})")
            if any(not isinstance(c, int) or not 1 <= c <= _MAX_CHANNELS for c in self.channels):
                fail(f"channels must be integers from 1 to {_MAX_CHANNELS}")

    @property
    def num_resolutions(self) -> int:
        return int(math.log2(self.img_resolution)) - 1

    @property
    def resolutions(self) -> list[int]:
        return [2 ** i for i in range(2, int(math.log2(self.img_resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        """W+ rows: two per resolution, minus the single conv at 4 px, plus the last toRGB."""
        return 2 * int(math.log2(self.img_resolution)) - 2

    def channel_table(self) -> dict[int, int]:
        if self.channels is not None:
            return dict(zip(self.resolutions, self.channels, strict=True))
        return {r: min(self.channel_base // r, self.channel_max) for r in self.resolutions}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = list(self.channels) if self.channels is not None else None
        data["resample_filter"] = list(self.resample_filter)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"invalid generator config: unknown keys {unknown}")
        values = dict(data)
        for key in ("channels", "resample_filter"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"invalid generator config: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> GeneratorConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid generator config: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError("invalid generator config: expected a JSON object")
        return cls.from_dict(data)


def tadne_config() -> GeneratorConfig:
    """The "This Anime Does Not Exist" layout: 512 px, 1024-d latents, wide low resolutions."""
    return GeneratorConfig(
        z_dim=1024, w_dim=1024, img_resolution=512, mapping_layers=4,
        channels=(1024, 1024, 1024, 1024, 1024, 512, 256, 128),
    )


# ---------------------------------------------------------------------------
# Resampling


def make_filter(taps: Sequence[int]) -> torch.Tensor:
    """Separable low-pass filter, normalised to unit DC gain: [k, k]."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = f[:, None] * f[None, :]
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, *, up: int = 1,
              pad: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (x0, x1, y0, y1; negative crops), then FIR-filter.

    x: [N, C, H, W] -> [N, C, H*up + y0 + y1 - k + 1, W*up + x0 + x1 - k + 1]
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, list(pad))
    # Depthwise (one filter per channel): on CPU its backward is ~10x faster than folding
    # channels into the batch. flip: a true convolution, as the filter is specified.
    kernel = (f * gain).flip([0, 1]).to(x.dtype)[None, None].expand(c, 1, *f.shape)
    return F.conv2d(x, kernel, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor, *, up: int = 2) -> torch.Tensor:
    """Filtered 2x upsampling that keeps the image centred: [N, C, H, W] -> [N, C, 2H, 2W]."""
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up * up)


def _bias_act(x: torch.Tensor, bias: torch.Tensor | None, *, lrelu: bool, gain: float,
              clamp: float | None) -> torch.Tensor:
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    if lrelu:
        x = F.leaky_relu(x, _LRELU_SLOPE)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                     demodulate: bool = True, up: int = 1, padding: int = 0,
                     resample_filter: torch.Tensor | None = None,
                     fused: bool | None = None) -> torch.Tensor:
    """Per-sample modulated convolution.

    x: [N, I, H, W], weight: [O, I, k, k], styles: [N, I] -> [N, O, H*up, W*up]

    Two equivalent forms: *fused* bakes each sample's styles into its own weights and
    runs one grouped conv (best for a single sample); *unfused* scales the inputs by
    the styles, runs one ordinary conv with the shared weight over the whole batch and
    scales the outputs by the demodulation coefficients, which batches far better.
    ``fused=None`` picks by batch size.
    """
    n, in_ch, h, w_ = x.shape
    out_ch, _, kh, kw = weight.shape
    if fused is None:
        fused = n == 1
    if x.dtype == torch.float16 and demodulate:
        # Rescale before multiplying so fp16 cannot overflow; demodulation undoes it.
        weight = weight * (1 / math.sqrt(in_ch * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    dcoefs = None
    if demodulate:
        # sum_{i,k} (w[o,i,k] s[n,i])^2 = sum_i s[n,i]^2 sum_k w[o,i,k]^2: a small matmul
        # instead of materialising the [N, O, I, k, k] product.
        energy = styles.square() @ weight.square().sum(dim=[2, 3]).t()    # [N, O]
        dcoefs = (energy + 1e-8).rsqrt()
    if fused:
        wt = weight[None] * styles[:, None, :, None, None]
        if dcoefs is not None:
            wt = wt * dcoefs[:, :, None, None, None]
        wt = wt.to(x.dtype)
        x = x.reshape(1, n * in_ch, h, w_)
        groups, w_conv = n, wt.reshape(n * out_ch, in_ch, kh, kw)
    else:
        x = x * styles.to(x.dtype)[:, :, None, None]
        groups, w_conv = 1, weight.to(x.dtype)
    if up == 1:
        out = F.conv2d(x, w_conv, padding=padding, groups=groups)
    else:
        if resample_filter is None:
            raise ValueError("upsampling convolution needs a resample filter")
        # Transposed conv does the stride-2 spread; the FIR filter then removes aliasing.
        w_t = w_conv.reshape(groups, -1, in_ch, kh, kw).transpose(1, 2)
        out = F.conv_transpose2d(x, w_t.reshape(groups * in_ch, -1, kh, kw), stride=up,
                                 groups=groups)
        fw = resample_filter.shape[-1]
        p0 = padding + (fw + up - 1) // 2 - (kw - 1)
        p1 = padding + (fw - up) // 2 - (kw - up)
        out = upfirdn2d(out, resample_filter, pad=(p0, p1, p0, p1), gain=up * up)
    out = out.reshape(n, out_ch, *out.shape[2:])
    if not fused and dcoefs is not None:
        out = out * dcoefs.to(out.dtype)[:, :, None, None]
    return out


# ---------------------------------------------------------------------------
# Layers


class FullyConnected(nn.Module):
    """Linear layer with equalised learning rate: weights stored at unit scale."""

    def __init__(self, in_features: int, out_features: int, *, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0, lrelu: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.lrelu = lrelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain
        if not self.lrelu:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return _bias_act(x.matmul(w.t()), b, lrelu=True, gain=_LRELU_GAIN, clamp=None)


class MappingNetwork(nn.Module):
    """z -> w: normalise z, then an MLP; ``w_avg`` is the truncation centre."""

    w_avg: torch.Tensor                     # [w_dim] buffer

    def __init__(self, *, z_dim: int, w_dim: int, num_layers: int, features: int,
                 lr_multiplier: float) -> None:
        super().__init__()
        self.num_layers = num_layers
        widths = [z_dim] + [features] * (num_layers - 1) + [w_dim]
        for i in range(num_layers):
            layer = FullyConnected(widths[i], widths[i + 1], lr_multiplier=lr_multiplier,
                                   lrelu=True)
            setattr(self, f"fc{i}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: [N, z_dim] -> w: [N, w_dim]"""
        x = z.to(torch.float32)
        x = x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up), noise, bias, leaky ReLU."""

    noise_const: torch.Tensor               # [R, R] buffer, when use_noise

    def __init__(self, in_channels: int, out_channels: int, *, w_dim: int, resolution: int,
                 up: int, conv_clamp: float | None, use_noise: bool) -> None:
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.conv_clamp = conv_clamp
        self.use_noise = use_noise
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, *, resample_filter: torch.Tensor,
                noise_mode: NoiseMode, noise_generator: torch.Generator | None = None,
                fused: bool | None = None, gain: float = 1.0) -> torch.Tensor:
        """x: [N, I, R/up, R/up], w: [N, w_dim] -> [N, O, R, R]"""
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, up=self.up, padding=1,
                             resample_filter=resample_filter, fused=fused)
        if self.use_noise and noise_mode != "none":
            if noise_mode == "const":
                noise = self.noise_const
            else:
                noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution],
                                    device=x.device, generator=noise_generator)
            x = x + (noise * self.noise_strength).to(x.dtype)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return _bias_act(x, self.bias, lrelu=True, gain=_LRELU_GAIN * gain, clamp=clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to image channels, without demodulation."""

    def __init__(self, in_channels: int, out_channels: int, *, w_dim: int,
                 conv_clamp: float | None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool | None = None,
                ) -> torch.Tensor:
        """x: [N, I, R, R], w: [N, w_dim] -> [N, C, R, R]"""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return _bias_act(x, self.bias, lrelu=False, gain=1.0, clamp=self.conv_clamp)


class SkipUpsample(nn.Module):
    """The resnet architecture's shortcut: 1x1 conv, no bias, then filtered 2x upsample."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, resample_filter: torch.Tensor, gain: float) -> torch.Tensor:
        x = F.conv2d(x, (self.weight * self.weight_gain).to(x.dtype))
        return upsample2d(x, resample_filter) * gain


class SynthesisBlock(nn.Module):
    """One resolution: (const | up-conv) + conv, and a toRGB where the architecture has one."""

    def __init__(self, in_channels: int, out_channels: int, *, w_dim: int, resolution: int,
                 img_channels: int, is_last: bool, architecture: Architecture,
                 conv_clamp: float | None, use_fp16: bool, use_noise: bool) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.architecture = architecture
        self.use_fp16 = use_fp16
        layer_kwargs: dict[str, Any] = dict(w_dim=w_dim, resolution=resolution,
                                            conv_clamp=conv_clamp, use_noise=use_noise)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer_kwargs)
        self.conv1 = SynthesisLayer(out_channels, out_channels, up=1, **layer_kwargs)
        self.has_torgb = is_last or architecture == "skip"
        if self.has_torgb:
            self.torgb = ToRGB(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        if in_channels != 0 and architecture == "resnet":
            self.skip = SkipUpsample(in_channels, out_channels)
        self.num_conv = 1 if in_channels == 0 else 2

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, *,
                resample_filter: torch.Tensor, noise_mode: NoiseMode,
                noise_generator: torch.Generator | None, force_fp32: bool,
                fused: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ws: [N, num_conv + 1, w_dim] (the last row is this block's toRGB style)."""
        fp16 = self.use_fp16 and not force_fp32 and ws.device.type == "cuda"
        dtype = torch.float16 if fp16 else torch.float32
        layer = dict(resample_filter=resample_filter, noise_mode=noise_mode,
                     noise_generator=noise_generator, fused=fused)
        if x is None:
            x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], **layer)
        else:
            x = x.to(dtype)
            if self.architecture == "resnet":
                gain = math.sqrt(0.5)  # keeps the sum of both paths at unit variance
                y = self.skip(x, resample_filter, gain)
                x = self.conv0(x, ws[:, 0], **layer)
                x = y + self.conv1(x, ws[:, 1], gain=gain, **layer)
            else:
                x = self.conv0(x, ws[:, 0], **layer)
                x = self.conv1(x, ws[:, 1], **layer)
        if img is not None:
            img = upsample2d(img, resample_filter)
        if self.has_torgb:
            y = self.torgb(x, ws[:, self.num_conv], fused=fused).to(torch.float32)
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """W+ -> image."""

    resample_filter: torch.Tensor           # [k, k] buffer, not saved

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.resolutions = config.resolutions
        channels = config.channel_table()
        fp16_from = max(2 ** (len(self.resolutions) + 2 - config.num_fp16_res), 8)
        self.register_buffer("resample_filter", make_filter(config.resample_filter),
                             persistent=False)
        for res in self.resolutions:
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0, channels[res],
                w_dim=config.w_dim, resolution=res, img_channels=config.img_channels,
                is_last=res == config.img_resolution, architecture=config.architecture,
                conv_clamp=config.conv_clamp, use_fp16=res >= fp16_from,
                use_noise=config.use_noise,
            )
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, *, noise_mode: NoiseMode = "const",
                noise_generator: torch.Generator | None = None,
                force_fp32: bool = False, fused_modconv: bool | None = None) -> torch.Tensor:
        """ws: [N, num_ws, w_dim] -> img: [N, C, R, R] in roughly [-1, 1]

        ``fused_modconv``: None picks per batch size; False keeps one arithmetic path
        for every batch size, which keeps batched results closest to solo ones.
        """
        if noise_mode not in _NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {_NOISE_MODES}, got {noise_mode!r}")
        x = img = None
        w_idx = 0
        for res in self.resolutions:
            block: SynthesisBlock = getattr(self, f"b{res}")
            block_ws = ws[:, w_idx:w_idx + block.num_conv + 1]
            x, img = block(x, img, block_ws, resample_filter=self.resample_filter,
                           noise_mode=noise_mode, noise_generator=noise_generator,
                           force_fp32=force_fp32, fused=fused_modconv)
            w_idx += block.num_conv
        if img is None:  # unreachable: the last block always has a toRGB
            raise RuntimeError("synthesis produced no image")
        return img


class Generator(nn.Module):
    """z -> (mapping) -> w -> (truncation) -> W+ -> (synthesis) -> image."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.num_ws = config.num_ws
        self.mapping = MappingNetwork(
            z_dim=config.z_dim, w_dim=config.w_dim, num_layers=config.mapping_layers,
            features=config.mapping_features or config.w_dim,
            lr_multiplier=config.mapping_lr_multiplier,
        )
        self.synthesis = SynthesisNetwork(config)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def truncate(self, w: torch.Tensor, psi: float = 1.0, cutoff: int | None = None,
                 ) -> torch.Tensor:
        """Move w towards (psi < 1) or away from (psi > 1) the average: w_avg + psi*(w - w_avg).

        w: [N, w_dim] or [N, num_ws, w_dim] -> [N, num_ws, w_dim]; rows at or past
        ``cutoff`` keep the untruncated w.
        """
        if w.ndim == 2:
            w = w.unsqueeze(1).expand(-1, self.num_ws, -1)
        if psi == 1:
            return w
        truncated = self.w_avg + psi * (w - self.w_avg)
        if cutoff is None:
            return truncated
        rows = torch.arange(self.num_ws, device=w.device)[None, :, None] < cutoff
        return torch.where(rows, truncated, w)

    def map(self, z: torch.Tensor, psi: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
        """z: [N, z_dim] -> W+: [N, num_ws, w_dim]"""
        return self.truncate(self.mapping(z), psi, cutoff)

    def synthesize(self, ws: torch.Tensor, *, noise_mode: NoiseMode = "const",
                   noise_generator: torch.Generator | None = None,
                   force_fp32: bool = False, fused_modconv: bool | None = None,
                   ) -> torch.Tensor:
        """W+: [N, num_ws, w_dim] -> img: [N, C, R, R]"""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.config.w_dim):
            raise ValueError(f"expected W+ of shape [N, {self.num_ws}, {self.config.w_dim}], "
                             f"got {list(ws.shape)}")
        return self.synthesis(ws, noise_mode=noise_mode, noise_generator=noise_generator,
                              force_fp32=force_fp32, fused_modconv=fused_modconv)

    def forward(self, z: torch.Tensor, *, psi: float = 1.0, cutoff: int | None = None,
                noise_mode: NoiseMode = "const",
                noise_generator: torch.Generator | None = None) -> torch.Tensor:
        """z: [N, z_dim] -> img: [N, C, R, R]"""
        return self.synthesize(self.map(z, psi, cutoff), noise_mode=noise_mode,
                               noise_generator=noise_generator)


def to_uint8_images(img: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8."""
    img = (img.detach().to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return img.permute(0, 2, 3, 1).cpu()
