"""The 16-bit fast path: where it applies, what stays fp32, and how close it lands.

Tolerances below were measured on the demo weights (CPU, torch 2.14) and set with
margin; bf16 keeps 8 mantissa bits, so a relative error of ~0.4 % per operation is
expected, and the search (Adam with beta1=0) carries differences along its path.
Measured (bf16): final CLIP score within 0.004 of fp32 over seeds 0-5 (the issue asks
for 0.02); loss curves within 0.024 over 30 steps (each curve spans ~0.1); the first
step's loss within 0.001 (the same start candidate wins); the generator forward
within 1.9 % of the image's peak at worst and 0.22 % on average.
"""

import pytest
import torch
from pydantic import ValidationError

from ml_backend.pipeline import Pipeline
from ml_backend.precision import Precision
from ml_backend.protocol import GenerationRequest
from ml_backend.search import LatentSearchEngine, SearchJob
from ml_backend.settings import MLSettings

SCORE_TOLERANCE = 0.02          # |final CLIP score, 16-bit - fp32|
LOSS_CURVE_TOLERANCE = 0.05     # max |loss_t, 16-bit - fp32| over the whole search
FIRST_LOSS_TOLERANCE = 0.005    # step 1: same start candidate, one step of rounding
FORWARD_MAX_RELATIVE = 0.04     # generator forward: max |diff| / max |fp32 image|
FORWARD_MEAN_RELATIVE = 0.005   # generator forward: mean |diff| / max |fp32 image|


def engine_with(pipeline: Pipeline, name: str) -> LatentSearchEngine:
    base = pipeline.engines["default"]
    return LatentSearchEngine(generator=base.generator, guide=pipeline.guide,
                              model_name="default", default_psi=base.default_psi,
                              demo_weights=True, precision=Precision(name, "cpu"))


def run(engine: LatentSearchEngine, request: GenerationRequest) -> tuple[SearchJob, list[float]]:
    job = engine.new_job(request)
    engine.start(job)
    curve = []
    while not job.done:
        engine.step([job])
        curve.append(job.loss)
    return job, curve


def test_auto_means_fp32_on_cpu_and_16_bits_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Precision.resolve("auto", "cpu").name == "fp32"
    assert Precision.resolve("bf16", "cpu").name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: True)
    assert Precision.resolve("auto", "cuda:1").name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: False)
    auto = Precision.resolve("auto", "cuda")       # a T4 or V100: no bf16 tensor cores
    assert auto.name == "fp16" and auto.needs_loss_scaling
    assert not Precision.resolve("fp32", "cuda").needs_loss_scaling
    assert not Precision.resolve("bf16", "cuda").needs_loss_scaling


def test_an_unknown_precision_is_refused_with_the_choices() -> None:
    with pytest.raises(ValidationError, match="'auto', 'fp32', 'bf16' or 'fp16'"):
        MLSettings(precision="fp8")


def test_generator_forward_in_bf16_stays_close_to_fp32(pipeline: Pipeline) -> None:
    generator = pipeline.engines["default"].generator
    z = torch.randn(8, generator.config.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = generator.synthesize(generator.map(z))
        with Precision("bf16", "cpu").autocast():
            fast = generator.synthesize(generator.map(z), force_fp32=True)
    diff = (fast.float() - reference).abs()
    peak = reference.abs().max()
    assert diff.max() <= FORWARD_MAX_RELATIVE * peak
    assert diff.mean() <= FORWARD_MEAN_RELATIVE * peak
    assert diff.max() > 0, "the forward did not run in bf16 at all"


@pytest.mark.slow  # ~20 s each: CPUs without bf16 units run 16-bit depthwise convs slowly
@pytest.mark.parametrize(("name", "seed"), [("bf16", 0), ("bf16", 5), ("fp16", 2)])
def test_a_16_bit_search_lands_where_fp32_does(pipeline: Pipeline, name: str,
                                                seed: int) -> None:
    request = GenerationRequest(prompt="blue hair, smile", steps=20, seed=seed)
    reference_job, reference = run(engine_with(pipeline, "fp32"), request)
    fast_engine = engine_with(pipeline, name)
    fast_job, fast = run(fast_engine, request)
    assert abs(fast[0] - reference[0]) <= FIRST_LOSS_TOLERANCE
    assert max(abs(a - b) for a, b in zip(fast, reference, strict=True)) <= LOSS_CURVE_TOLERANCE
    assert fast != reference, "the 16-bit path computed exactly like fp32"
    # the delivered picture and its score come from the fp32 render of the found latent
    fast_score = fast_engine.finish(fast_job).score
    reference_score = engine_with(pipeline, "fp32").finish(reference_job).score
    assert fast_score is not None and reference_score is not None
    assert abs(fast_score - reference_score) <= SCORE_TOLERANCE


def test_the_fast_path_computes_in_bf16_and_keeps_the_search_state_fp32(
        pipeline: Pipeline) -> None:
    engine = engine_with(pipeline, "bf16")
    seen: dict[str, set[torch.dtype]] = {"generator": set(), "clip": set()}

    def record(into: str):  # a forward hook that notes its module's output type
        return lambda module, inputs, output: seen[into].add(output.dtype)

    last_block = getattr(engine.generator.synthesis, f"b{engine.generator.config.img_resolution}")
    hooks = [last_block.conv1.register_forward_hook(record("generator")),
             pipeline.guide.model.visual.conv1.register_forward_hook(record("clip"))]
    try:
        job, _ = run(engine, GenerationRequest(prompt="cat ears", steps=3, seed=1,
                                               init_candidates=2))
        assert seen == {"generator": {torch.bfloat16}, "clip": {torch.bfloat16}}
        state = job.started
        assert state.q.dtype == state.q_ema.dtype == torch.float32
        assert all(t.dtype == torch.float32 for s in state.optimizer.state.values()
                   for t in s.values() if t.is_floating_point())
        seen["generator"].clear()
        seen["clip"].clear()
        engine.finish(job)  # the delivered picture: the reference path
        assert seen == {"generator": {torch.float32}, "clip": {torch.float32}}
    finally:
        for hook in hooks:
            hook.remove()
