"""The contract between every caller and the ML side: requests, progress, results.

Pure pydantic with no torch import, so the web backend can validate a request at
the door with exactly the bounds the engine enforces. Messages say what to fix.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ml_backend.recipe import DEFAULT_RECIPE
from ml_backend.text import parse_decimal, plain_text

__all__ = [
    "MAX_IMAGE_PROMPT_BYTES", "MAX_PROMPTS", "MAX_PROMPT_CHARS", "MAX_SEED", "Failure",
    "FailureCode", "GenerationRequest", "Progress", "Result", "StreamMessage", "WeightedPrompt",
    "parse_prompt", "plain_text", "sample_latent", "seed_to_int",
]

MAX_PROMPT_CHARS = 1000
MAX_PROMPTS = 8
MAX_IMAGE_PROMPT_BYTES = 10 * 1024 * 1024
MAX_SEED = 2**63 - 1
NEGATIVE_PROMPT_WEIGHT = DEFAULT_RECIPE.negative_weight  # a negative part without a weight

_WEIGHT_SUFFIX = re.compile(r"^(?P<text>.*?):\s*(?P<weight>[-+]?(\d+(\.\d*)?|\.\d+))\s*$", re.S)


class WeightedPrompt(BaseModel):
    """One text the image should resemble (weight > 0) or avoid (weight < 0)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"text": "a girl with silver hair", "weight": 1.0}]})

    text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    weight: float = Field(1.0, ge=-10, le=10)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        text = plain_text(text).strip()
        if not text:
            raise ValueError("prompt text must not be blank")
        return text

    @field_validator("weight")
    @classmethod
    def _not_zero(cls, weight: float) -> float:
        if weight == 0:
            raise ValueError("a prompt weight of 0 has no effect; remove the prompt instead")
        return weight


def parse_prompt(text: str, *, default_weight: float = 1.0) -> list[WeightedPrompt]:
    """``"blue hair, smile:1 | hat:-0.5"`` -> [("blue hair, smile", 1), ("hat", -0.5)]."""
    prompts = []
    for part in text.split("|"):
        if not part.strip():
            continue
        match = _WEIGHT_SUFFIX.match(part)
        if match:
            prompts.append(WeightedPrompt(text=match["text"], weight=float(match["weight"])))
        else:
            prompts.append(WeightedPrompt(text=part, weight=default_weight))
    return prompts


def seed_to_int(seed: int | str) -> int:
    """A name always maps to the same seed; a string of ASCII digits is that number
    (anything else, ``"²"`` included, is a name)."""
    if isinstance(seed, int):
        return seed
    stripped = seed.strip()
    number = parse_decimal(stripped)
    if number is not None and number <= MAX_SEED:
        return number
    digest = hashlib.sha256(stripped.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & MAX_SEED


def sample_latent(seed: int, dim: int) -> list[float]:
    """A sample's z: ``dim`` standard normal values from the seed alone.

    Part of the contract because two sides render samples: the ML side (torch) and a
    web process serving them from ONNX on its CPU, which has no torch. Both must give
    a name the same face, so the values come from SHA-256 in counter mode and the
    Box-Muller transform, in plain Python floats, not from a library's random stream.
    """
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in 0..{MAX_SEED}, got {seed}")
    values: list[float] = []
    counter = 0
    while len(values) < dim:
        block = hashlib.sha256(b"clipgan-z" + seed.to_bytes(8, "big")
                               + counter.to_bytes(8, "big")).digest()
        counter += 1
        for offset in (0, 16):
            u1 = 1.0 - (int.from_bytes(block[offset:offset + 8], "big") >> 11) * 2.0 ** -53
            u2 = (int.from_bytes(block[offset + 8:offset + 16], "big") >> 11) * 2.0 ** -53
            radius = math.sqrt(-2.0 * math.log(u1))  # u1 in (0, 1]: no log(0)
            values += (radius * math.cos(2 * math.pi * u2), radius * math.sin(2 * math.pi * u2))
    return values[:dim]


Seed = int | Annotated[str, Field(min_length=1, max_length=64)]


# In JSON an image prompt travels as base64 text (4 characters per 3 bytes).
ImagePromptBytes = Annotated[bytes, WithJsonSchema({
    "type": "string", "contentEncoding": "base64", "contentMediaType": "image/*",
    "maxLength": -(-MAX_IMAGE_PROMPT_BYTES // 3) * 4})]


class GenerationRequest(BaseModel):
    """A picture to make. No prompt and no image prompt means a plain random sample."""

    model_config = ConfigDict(
        extra="forbid", ser_json_bytes="base64", val_json_bytes="base64",
        json_schema_extra={"examples": [
            {"prompt": "a girl with silver hair, smiling:1 | blurry:-0.5", "seed": "alice",
             "upscale": 2},
            {"prompts": [{"text": "a girl with silver hair", "weight": 1.0},
                         {"text": "blurry", "weight": -0.5}], "psi": 0.7, "steps": 60},
        ]})

    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description=(
        "What the picture should show; 'a:1 | b:-0.5' weights parts, negative weights avoid."))
    prompts: list[WeightedPrompt] | None = Field(None, max_length=MAX_PROMPTS, description=(
        "Structured alternative to 'prompt'."))
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description=(
        f"What to avoid; parts without a weight count -{NEGATIVE_PROMPT_WEIGHT}."))
    image_prompt: ImagePromptBytes | None = Field(None, max_length=MAX_IMAGE_PROMPT_BYTES,
                                                  description=(
        "An image (PNG/JPEG/WebP) the result should resemble, e.g. a selfie."))
    image_prompt_weight: float = Field(1.0, ge=-10, le=10)
    model: str = Field("default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    psi: float | None = Field(None, ge=0.0, le=2.0, description=(
        "Creativity: truncation psi, 0 (average face) to 2 (wild); default: the model's."))
    steps: int = Field(DEFAULT_RECIPE.steps, ge=1, le=500, description="Optimisation steps.")
    seed: Seed | None = Field(None, description="Integer or a name; unset: random.")
    cutouts: int = Field(DEFAULT_RECIPE.cutouts, ge=1, le=128,
                         description="Random crops scored per step.")
    init_candidates: int = Field(DEFAULT_RECIPE.init_candidates, ge=1, le=256,
                                 description="Random starts; best is kept.")
    learning_rate: float = Field(DEFAULT_RECIPE.learning_rate, gt=0.0, le=1.0)
    preview_every: int = Field(DEFAULT_RECIPE.preview_every, ge=0, le=500,
                               description="Preview image every k steps; 0 off.")
    upscale: Literal[1, 2, 4] = 1

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, seed: int | str | None) -> int | str | None:
        if isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}")
        return plain_text(seed) if isinstance(seed, str) else seed

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _plain(cls, text: str | None) -> str | None:
        return plain_text(text) if text is not None else None

    @model_validator(mode="after")
    def _one_way_to_prompt(self) -> GenerationRequest:
        if self.prompt is not None and self.prompts is not None:
            raise ValueError("give either 'prompt' or 'prompts', not both")
        if self.prompt is not None:
            self.weighted_prompts()  # raises with the offending part
        if self.negative_prompt is not None:
            parse_prompt(self.negative_prompt)
        if len(self.weighted_prompts()) > MAX_PROMPTS:  # '|' parts count: one limit on all
            raise ValueError(f"at most {MAX_PROMPTS} prompt parts in all (prompt, prompts and "
                             "negative_prompt together, each '|' part counted)")
        return self

    @property
    def is_sample(self) -> bool:
        """Nothing to guide towards: one generator pass from the seed."""
        return not self.weighted_prompts() and self.image_prompt is None

    def weighted_prompts(self) -> list[WeightedPrompt]:
        prompts = list(self.prompts or [])
        if self.prompt:
            prompts += parse_prompt(self.prompt)
        if self.negative_prompt:
            for p in parse_prompt(self.negative_prompt, default_weight=NEGATIVE_PROMPT_WEIGHT):
                prompts.append(WeightedPrompt(text=p.text, weight=-abs(p.weight)))
        return prompts


class Progress(BaseModel):
    """One search step done."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    kind: Literal["progress"] = "progress"
    step: int
    total: int
    score: float = Field(description="CLIP similarity to the prompts, higher is closer.")
    preview_png: bytes | None = None


class Result(BaseModel):
    """The finished picture and how it was made."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64",
                              protected_namespaces=())

    kind: Literal["result"] = "result"
    png: bytes
    width: int
    height: int
    seed: int
    score: float | None = Field(None, description="Final CLIP similarity; None for samples.")
    model: str
    psi: float
    steps: int
    demo_weights: bool = Field(description="True when made by untrained demo weights.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")


FailureCode = Literal["invalid_request", "cancelled", "timeout", "busy", "unavailable",
                      "internal"]

# What each code means for the caller, in one place (both transports, the dispatcher and
# the public API read it): may the same request succeed if tried again, and which HTTP
# status tells a client so.
_RETRYABLE: frozenset[str] = frozenset({"busy", "unavailable", "internal"})
_HTTP_STATUS: dict[str, int] = {"invalid_request": 422, "cancelled": 409, "timeout": 504,
                                "busy": 503, "unavailable": 503, "internal": 503}


class Failure(BaseModel):
    """The last message of a stream that did not produce a picture.

    * ``invalid_request``: fails the same way again (bad prompt, unknown model).
    * ``cancelled``: the caller asked for it.
    * ``timeout``: the attempt ran past its time limit; the same work would again.
    * ``busy``: the ML side is full (back pressure); nothing was started.
    * ``unavailable``: the ML side could not be reached, or went away mid-stream
      (scaled to zero, starting, a replica died).
    * ``internal``: the ML side failed (out of memory...); may pass.

    The ML side produces the first three and ``internal``; the transports produce
    ``busy`` and ``unavailable``, so a caller sees one vocabulary whichever way it
    reached the ML side.
    """

    kind: Literal["error"] = "error"
    code: FailureCode
    message: str

    @property
    def retryable(self) -> bool:
        """Trying the same request again may succeed."""
        return self.code in _RETRYABLE

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self.code]

    @property
    def public_message(self) -> str:
        """What a user may read: their own request's problem, or a fixed sentence per
        code. The message itself (exception text from inside a service) is for logs."""
        if self.code == "invalid_request":
            return self.message[:500]
        return _PUBLIC_MESSAGES[self.code]


_PUBLIC_MESSAGES: dict[FailureCode, str] = {
    "cancelled": "cancelled by the user",
    "timeout": "the job ran past its time limit",
    "busy": "the image service is at capacity",
    "unavailable": "the image service could not be reached",
    "internal": "the image service failed on this job",
}


StreamMessage = Annotated[Progress | Result | Failure, Field(discriminator="kind")]
