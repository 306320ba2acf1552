"""The ML side: CLIP-guided latent search over StyleGAN2, served by Ray Serve.

Public modules (see docs/architecture.md):

* :mod:`~ml_backend.protocol` - the contract every caller speaks (torch-free);
* :mod:`~ml_backend.recipe` - the search algorithm's constants (torch-free);
* :mod:`~ml_backend.text` - text we store and stream, decimal numbers (stdlib only);
* :mod:`~ml_backend.pipeline` - the in-process API (``Pipeline``);
* :mod:`~ml_backend.serve` - the Ray Serve application (``build_app``);
* :mod:`~ml_backend.weights` - reading every weights file safely;
* :mod:`~ml_backend.settings` - ``CLIPGAN_*`` settings of the ML side.

Nothing is imported here, so importing the torch-free contract never loads torch.
This package never imports ``web_backend`` or ``clipgan``.
"""

__all__ = ["local_cluster", "pipeline", "protocol", "recipe", "serve", "settings", "text",
           "weights"]
