"""The generator: shapes, known architectures, truncation, noise, batching, gradients."""

import math

import pytest
import torch

from ml_backend.stylegan2 import (
    ConfigError,
    Generator,
    GeneratorConfig,
    modulated_conv2d,
    tadne_config,
    to_uint8_images,
)

SMALL = GeneratorConfig(z_dim=32, w_dim=32, img_resolution=32, mapping_layers=2,
                        channel_base=512, channel_max=64)


def _params_on_meta(config: GeneratorConfig) -> int:
    with torch.device("meta"):
        g = Generator(config)
    return sum(p.numel() for p in g.parameters())


@pytest.fixture(scope="module")
def small_generator() -> Generator:
    torch.manual_seed(0)
    g = Generator(SMALL).eval()
    with torch.no_grad():  # non-zero noise so noise modes are observable
        for name, p in g.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
        g.mapping.w_avg.normal_(0, 0.3)
    return g


def test_tadne_layout_has_the_published_size() -> None:
    config = tadne_config()
    assert config.num_ws == 16
    assert config.channel_table() == {4: 1024, 8: 1024, 16: 1024, 32: 1024, 64: 1024,
                                      128: 512, 256: 256, 512: 128}
    assert _params_on_meta(config) == pytest.approx(116.8e6, rel=2e-3)


def test_vanilla_config_f_at_1024px() -> None:
    config = GeneratorConfig(img_resolution=1024)
    assert config.num_ws == 18
    assert config.channel_table()[1024] == 32 and config.channel_table()[64] == 512
    assert _params_on_meta(config) == pytest.approx(30.37e6, rel=1e-2)


@pytest.mark.parametrize("resolution", [4, 8, 64, 256])
def test_num_ws_follows_resolution(resolution: int) -> None:
    config = GeneratorConfig(img_resolution=resolution, channel_base=256, channel_max=8,
                             z_dim=8, w_dim=8, mapping_layers=1)
    assert config.num_ws == 2 * int(math.log2(resolution)) - 2
    g = Generator(config)
    img = g(torch.randn(2, 8))
    assert img.shape == (2, 3, resolution, resolution)


@pytest.mark.parametrize("architecture", ["orig", "skip", "resnet"])
def test_batch_of_many_equals_one_at_a_time(architecture: str) -> None:
    torch.manual_seed(1)
    g = Generator(GeneratorConfig(**{**SMALL.to_dict(), "architecture": architecture,
                                     "channels": None, "resample_filter": (1, 3, 3, 1)}))
    z = torch.randn(4, 32)
    with torch.no_grad():
        batched = g(z, psi=0.8)
        single = torch.cat([g(z[i:i + 1], psi=0.8) for i in range(4)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_truncation_moves_towards_or_away_from_the_average(small_generator: Generator) -> None:
    g = small_generator
    w = g.mapping(torch.randn(3, 32))
    dist = (w - g.w_avg).norm(dim=-1)
    for psi in (0.5, 1.0, 1.5, 2.0):
        ws = g.truncate(w, psi)
        assert ws.shape == (3, g.num_ws, 32)
        assert torch.allclose((ws[:, 0] - g.w_avg).norm(dim=-1), psi * dist, rtol=1e-5)


def test_truncation_cutoff_leaves_fine_layers_alone(small_generator: Generator) -> None:
    g = small_generator
    w = g.mapping(torch.randn(2, 32))
    ws = g.truncate(w, 1.7, cutoff=3)
    assert torch.allclose(ws[:, :3], g.w_avg + 1.7 * (w[:, None] - g.w_avg))
    assert torch.equal(ws[:, 3:], w[:, None].expand(-1, g.num_ws - 3, -1))


def test_noise_modes(small_generator: Generator) -> None:
    g = small_generator
    z = torch.randn(1, 32)
    with torch.no_grad():
        const_a = g(z, noise_mode="const")
        const_b = g(z, noise_mode="const")
        rand_a = g(z, noise_mode="random", noise_generator=torch.Generator().manual_seed(1))
        rand_b = g(z, noise_mode="random", noise_generator=torch.Generator().manual_seed(2))
        none = g(z, noise_mode="none")
    assert torch.equal(const_a, const_b)
    assert not torch.allclose(rand_a, rand_b)
    assert not torch.allclose(none, const_a)
    with pytest.raises(ValueError, match="noise_mode"):
        g(z, noise_mode="loud")  # type: ignore[arg-type]


def test_differentiable_with_respect_to_w_plus(small_generator: Generator) -> None:
    g = small_generator
    ws = g.map(torch.randn(2, 32)).detach().requires_grad_(True)
    g.synthesize(ws).square().mean().backward()
    assert ws.grad is not None and torch.isfinite(ws.grad).all()
    assert (ws.grad.abs().sum(dim=-1) > 0).all(), "every W+ row should influence the image"


def test_fp16_modulated_conv_matches_fp32() -> None:
    """The fp16 path pre-normalises to avoid overflow; demodulation must undo it exactly."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 8, 8)
    weight = torch.randn(16, 8, 3, 3) * 50
    styles = torch.randn(2, 8) * 30
    ref = modulated_conv2d(x, weight, styles, padding=1)
    half = modulated_conv2d(x.half(), weight.half(), styles.half(), padding=1)
    assert half.dtype == torch.float16
    assert torch.allclose(half.float(), ref, atol=2e-2, rtol=2e-2)


def test_wrong_w_plus_shape_is_a_clear_error(small_generator: Generator) -> None:
    with pytest.raises(ValueError, match=r"expected W\+ of shape \[N, 8, 32\]"):
        small_generator.synthesize(torch.randn(2, 32))


@pytest.mark.parametrize(("changes", "message"), [
    ({"img_resolution": 48}, "power of two"),
    ({"architecture": "unet"}, "architecture must be one of"),
    ({"channels": (8, 8)}, "expected one per resolution"),
    ({"z_dim": 0}, "z_dim must be an integer from 1 to 8192"),
    ({"mapping_layers": 10**9}, "mapping_layers must be an integer from 1 to 32"),
    ({"img_resolution": 2**20}, "power of two from 4 to 4096"),
    ({"channels": (8,) * 3 + (10**6,)}, "channels must be integers from 1 to 8192"),
    ({"num_fp16_res": 9}, "num_fp16_res"),
])
def test_invalid_configs_say_what_is_wrong(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GeneratorConfig(**{**SMALL.to_dict(), "channels": None, "resample_filter": (1, 3, 3, 1),
                           **changes})


def test_config_json_round_trip_and_unknown_keys() -> None:
    config = tadne_config()
    assert GeneratorConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="unknown keys"):
        GeneratorConfig.from_dict({"z_dim": 8, "colour": "blue"})
    with pytest.raises(ConfigError, match="not JSON"):
        GeneratorConfig.from_json("{nope")


def test_uint8_conversion_clamps_range() -> None:
    img = torch.tensor([[[[-2.0, 0.0], [1.0, 3.0]]]]).expand(1, 3, 2, 2)
    out = to_uint8_images(img)
    assert out.shape == (1, 2, 2, 3) and out.dtype == torch.uint8
    assert out[0, :, :, 0].tolist() == [[0, 128], [255, 255]]
