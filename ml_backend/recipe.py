"""The latent-search recipe: every constant of the algorithm, in one frozen place.

Torch-free on purpose: :mod:`ml_backend.protocol` takes its request defaults from
here, so the web side validates a request against the same numbers the engine
runs, and a change of recipe is one edit. The values follow the recipe that
worked well in public CLIP+StyleGAN notebooks (best of N random starts, AdamW on
normalised W+, cutouts pooled to CLIP's input size, spherical loss, EMA output).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_RECIPE", "SearchRecipe"]


@dataclass(frozen=True)
class SearchRecipe:
    """How one search runs; per-request knobs default to these values."""

    steps: int = 60                        # optimisation steps of a request that gives none
    learning_rate: float = 0.04            # AdamW step size on the normalised latent
    adam_betas: tuple[float, float] = (0.0, 0.999)  # beta1 = 0: no momentum across cutouts
    cutouts: int = 32                      # random crops scored per step
    cut_power: float = 1.5                 # crop side ~ u**p: mostly details, some whole-image
    init_candidates: int = 32              # random starts; the best by CLIP score is kept
    candidate_chunk: int = 8               # starts rendered and scored per forward pass
    ema_decay: float = 0.9                 # the rendered latent is an EMA of the optimised one
    w_std_samples: int = 10_000            # mapped samples that estimate the per-dim std of w
    preview_every: int = 10                # steps between preview images
    negative_weight: float = 0.5           # strength of a negative prompt given no weight


DEFAULT_RECIPE = SearchRecipe()
