"""Model weights: every file the ML side reads, read one safe way.

* generators: NVIDIA ``.pkl`` (allow-list unpickler), rosinality ``.pt``
  (weights-only loader), clipgan ``.safetensors`` (our format, config in the header);
* CLIP: OpenAI's TorchScript releases, state dicts, safetensors;
* upscaler: Real-ESRGAN RRDBNet ``.pth``;
* the untrained demo weights the project builds itself.

Formats are sniffed from content, never from the name, and every problem with any of
these files is one :class:`CheckpointError` naming the file and the reason.
"""

from ml_backend.weights.clip import import_clip, load_clip
from ml_backend.weights.demo import demo_clip_path, demo_generator_path
from ml_backend.weights.formats import CheckpointError
from ml_backend.weights.generator import (
    GeneratorCheckpoint,
    build_generator,
    convert_checkpoint,
    describe,
    load_generator,
    read_checkpoint,
    save_checkpoint,
)
from ml_backend.weights.upscaler import load_rrdbnet

__all__ = [
    "CheckpointError", "GeneratorCheckpoint", "build_generator", "convert_checkpoint",
    "demo_clip_path", "demo_generator_path", "describe", "import_clip", "load_clip",
    "load_generator", "load_rrdbnet", "read_checkpoint", "save_checkpoint",
]
