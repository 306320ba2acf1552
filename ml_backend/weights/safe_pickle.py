"""Allow-list unpickler for NVIDIA StyleGAN network pickles.

A stock ``pickle.load`` on such a file would import ``torch_utils.persistence``
and ``exec`` the Python source stored inside it, and any pickle can name
``os.system``. This reader resolves every global through a fixed table of
harmless stand-ins and refuses anything else, so loading a file never imports a
module the file names and never runs code from it. Networks come back as
:class:`PersistedModule` records (class name, init kwargs, tensors, children);
the stored ``module_src`` is kept as an opaque string and never executed.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import torch

__all__ = ["AllowListUnpickler", "EasyDict", "PersistedModule", "UnsafePickleError", "safe_load"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that is not on the allow-list."""


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict with attribute reads."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


@dataclass
class PersistedModule:
    """What ``torch_utils.persistence`` stored for one network object."""

    class_name: str
    version: int
    state: dict[str, Any]
    module_src: str = field(repr=False, default="")  # kept for inspection, never executed

    @property
    def init_kwargs(self) -> dict[str, Any]:
        kwargs = self.state.get("_init_kwargs") or {}
        return dict(kwargs) if isinstance(kwargs, dict) else {}

    @property
    def children(self) -> dict[str, PersistedModule]:
        modules = self.state.get("_modules") or {}
        return {k: v for k, v in modules.items() if isinstance(v, PersistedModule)}

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat ``name -> tensor`` of parameters and buffers, like ``state_dict()``."""
        out: dict[str, torch.Tensor] = {}
        for slot in ("_parameters", "_buffers"):
            for name, value in (self.state.get(slot) or {}).items():
                if isinstance(value, torch.Tensor):
                    out[prefix + name] = value
        for name, child in self.children.items():
            out.update(child.tensors(f"{prefix}{name}."))
        return out


def _reconstruct_persistent_obj(meta: Any) -> PersistedModule:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("persistent object without a class meta dict")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise pickle.UnpicklingError("persistent object meta lacks class_name or state")
    src = meta.get("module_src")
    return PersistedModule(class_name=class_name, version=int(meta.get("version", 0)),
                           state=dict(state), module_src=src if isinstance(src, str) else "")


def _load_storage_from_bytes(data: bytes) -> Any:
    """Storages are nested legacy ``torch.save`` blobs: read them with torch's own safe loader."""
    if not isinstance(data, bytes | bytearray):
        raise pickle.UnpicklingError("tensor storage is not a byte string")
    storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise pickle.UnpicklingError(f"expected a tensor storage, found {type(storage).__name__}")
    return storage


def _rebuild_tensor_v2(storage: Any, storage_offset: int, size: tuple[int, ...],
                       stride: tuple[int, ...], requires_grad: bool = False,
                       backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    return torch._utils._rebuild_tensor_v2(storage, int(storage_offset), tuple(size),
                                           tuple(stride), False, collections.OrderedDict())


def _rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter rebuilt from something that is not a tensor")
    return data  # plain tensors: nothing downstream needs autograd state from the file


def _numpy_scalar(dtype: Any, data: bytes | None = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("only plain numeric numpy scalars are accepted")
    return np.frombuffer(data, dtype=dtype)[0].item()


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str):
        raise pickle.UnpicklingError("numpy dtype spec must be a string")
    dtype = np.dtype(spec)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object numpy dtypes are refused")
    return dtype


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}


class AllowListUnpickler(pickle.Unpickler):
    """Resolves globals only through :data:`_ALLOWED`; never imports."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: not on the allow-list "
                "(the file may be malicious or not a StyleGAN network pickle)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not used by network pickles")


def safe_load(file: IO[bytes]) -> Any:
    """Unpickle ``file`` with the allow-list; raises pickle / EOF errors on bad input."""
    return AllowListUnpickler(file).load()
