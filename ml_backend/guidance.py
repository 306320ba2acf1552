"""CLIP guidance: what "looks like the prompt" means to the latent search.

The CLIP model comes from :func:`ml_backend.weights.load_clip`; this module turns
prompts and images into targets, cuts images into CLIP-sized crops and scores them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from ml_backend import image_prompts
from ml_backend.cutouts import cutouts as random_cutouts
from ml_backend.precision import Precision
from ml_backend.protocol import WeightedPrompt
from ml_backend.recipe import DEFAULT_RECIPE
from ml_backend.weights.clip import ClipModel, import_clip

__all__ = ["CLIP_MEAN", "CLIP_STD", "ClipGuide", "GuidanceError", "Targets",
           "spherical_distance"]

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class GuidanceError(ValueError):
    """A prompt CLIP cannot use; the message says what to change."""


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between unit vectors: a [..., D], b [..., D] -> [...]."""
    # Rounding can push |a - b| / 2 a hair past 1 for opposite vectors: clamp, or arcsin -> NaN.
    return (a - b).norm(dim=-1).div(2).clamp(max=1.0).arcsin().pow(2).mul(2)


@dataclass(frozen=True)
class Targets:
    """What one job steers towards (weight > 0) and away from (weight < 0)."""

    embeds: torch.Tensor   # [P, D], unit length
    weights: torch.Tensor  # [P]

    def loss(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """image_embeds: [C, D] unit (cutouts of one image) -> scalar."""
        dists = spherical_distance(image_embeds[:, None], self.embeds[None])  # [C, P]
        return (dists.mean(dim=0) * self.weights).sum()

    def score(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Weighted cosine similarity, in [-1, 1]; higher is closer. [C, D] -> scalar."""
        cos = image_embeds @ self.embeds.t()                                     # [C, P]
        return (cos.mean(dim=0) * self.weights).sum() / self.weights.abs().sum()


class ClipGuide:
    """Prompt encoding, cutouts and similarity for one CLIP model."""

    def __init__(self, model: ClipModel, *, text_cache_size: int = 1024) -> None:
        clip = import_clip()
        self.model = model
        self.device = next(model.parameters()).device
        self.input_resolution: int = model.visual.input_resolution
        self.context_length: int = model.context_length
        self.embed_dim: int = model.text_projection.shape[1]
        self._tokenizer = clip.simple_tokenizer.SimpleTokenizer()
        self._tokenize = clip.tokenize
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._text_cache_size = text_cache_size
        self._lock = threading.Lock()
        self._mean = torch.tensor(CLIP_MEAN, device=self.device)[None, :, None, None]
        self._std = torch.tensor(CLIP_STD, device=self.device)[None, :, None, None]

    # --- text and image prompts ------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens CLIP would read, including its start and end markers."""
        return len(self._tokenizer.encode(text)) + 2

    def check_prompt(self, text: str) -> None:
        tokens = self.count_tokens(text)
        if tokens > self.context_length:
            preview = text if len(text) <= 40 else text[:37] + "..."
            raise GuidanceError(
                f"prompt {preview!r} is {tokens - 2} tokens long, but CLIP reads at most "
                f"{self.context_length - 2}; shorten it or split it into weighted parts "
                "with '|'")

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """texts -> [P, D] unit embeddings, cached per text."""
        for text in texts:
            self.check_prompt(text)
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            tokens = self._tokenize(missing, context_length=self.context_length).to(self.device)
            embeds = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            with self._lock:
                for text, embed in zip(missing, embeds, strict=True):
                    self._text_cache[text] = embed
                while len(self._text_cache) > self._text_cache_size:
                    self._text_cache.popitem(last=False)
        with self._lock:
            for text in texts:
                self._text_cache.move_to_end(text)
            return torch.stack([self._text_cache[t] for t in texts])

    @torch.no_grad()
    def encode_image_bytes(self, data: bytes) -> torch.Tensor:
        """An uploaded picture -> [D] unit embedding (centre crop, like CLIP's preprocessing)."""
        try:  # bounded decoding: the same formats and pixel cap as the web side's
            square = image_prompts.decode_square(data, side=self.input_resolution)
        except image_prompts.ImagePromptError as exc:
            raise GuidanceError(str(exc)) from None
        rgb = square.resize((self.input_resolution, self.input_resolution),
                            Image.Resampling.BICUBIC)
        pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        pixels = pixels.reshape(self.input_resolution, self.input_resolution, 3)
        x = pixels.permute(2, 0, 1)[None].float().div(127.5).sub(1).to(self.device)
        return self.encode_pixels(self._resize(x))[0]

    def targets(self, prompts: list[WeightedPrompt], image_prompt: bytes | None = None,
                image_weight: float = 1.0) -> Targets:
        embeds, weights = [], []
        if prompts:
            embeds.append(self.encode_texts([p.text for p in prompts]))
            weights += [p.weight for p in prompts]
        if image_prompt is not None:
            embeds.append(self.encode_image_bytes(image_prompt)[None])
            weights.append(image_weight)
        if not embeds:
            raise GuidanceError("nothing to guide towards: give a prompt or an image prompt")
        return Targets(torch.cat(embeds), torch.tensor(weights, device=self.device))

    # --- images ----------------------------------------------------------------------

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, h, w] in [-1, 1] -> [N, 3, R, R] CLIP-normalised."""
        r = self.input_resolution
        if x.shape[-1] >= r and x.shape[-2] >= r:
            x = F.adaptive_avg_pool2d(x, r)
        else:
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        return ((x + 1) / 2 - self._mean) / self._std

    def encode_pixels(self, x: torch.Tensor, precision: Precision | None = None,
                      ) -> torch.Tensor:
        """[N, 3, R, R] CLIP-normalised -> [N, D] unit embeddings (differentiable).

        ``precision`` runs the image encoder under its autocast; the normalisation,
        and so every loss computed from the result, stays fp32.
        """
        dtype = self.model.visual.conv1.weight.dtype
        with precision.autocast() if precision is not None else contextlib.nullcontext():
            features = self.model.encode_image(x.to(dtype))                 # [N, D]
        return F.normalize(features.float(), dim=-1)

    def embed_images(self, images: torch.Tensor, precision: Precision | None = None,
                     ) -> torch.Tensor:
        """Whole images [N, 3, H, W] in [-1, 1] -> [N, D] unit embeddings."""
        return self.encode_pixels(self._resize(images), precision)

    def cutouts(self, images: torch.Tensor, counts: Sequence[int],
                rngs: Sequence[torch.Generator], *,
                cut_power: float = DEFAULT_RECIPE.cut_power) -> torch.Tensor:
        """Random square crops of each image, CLIP-normalised, in one batched resampling.

        images [N, 3, H, W] in [-1, 1], ``counts[n]`` crops of image n drawn from
        ``rngs[n]`` -> [sum(counts), 3, R, R], image by image. Crop sides follow
        u**cut_power between CLIP's input size and the full image, so most crops are
        small (details) and some cover everything (composition).
        """
        crops = random_cutouts(images, counts, rngs, out=self.input_resolution,
                               cut_power=cut_power)                          # [sum, 3, R, R]
        return ((crops + 1) / 2 - self._mean) / self._std
