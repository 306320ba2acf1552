"""Allow-list unpickler for NVIDIA StyleGAN network pickles, safe against hostile files.

A stock ``pickle.load`` on such a file would import ``torch_utils.persistence`` and
``exec`` the Python source stored inside it, and any pickle can name ``os.system``.
The threat model here is a file written by an attacker, so this reader:

* resolves globals only through a fixed table of stand-ins; it never imports a
  module the file names and never runs the stored ``module_src``;
* refuses ``BUILD`` (pickle's ``__setstate__`` / ``__dict__`` update) on everything
  but its own placeholder records, whose state it validates itself: numpy's own
  ``dtype.__setstate__`` trusts its input (out-of-bounds reads), and ``BUILD`` on a
  class would rewrite that class for the rest of the process;
* rebuilds numpy scalars and arrays only from a validated (dtype, shape, bytes),
  and tensors from storage blobs it parses itself, every size checked against the
  bytes actually present (``torch.load`` would allocate whatever a header claims);
* lets only scalars be dict keys or set members, so no attacker-built nested tuple
  is ever hashed (tuple hashing is exponential in shared nesting);
* bounds the work: opcodes, memo entries, bytes read (never more than the file has);
* fails only with :class:`pickle.UnpicklingError` subclasses, whose messages never
  include the file's objects (formatting those can take exponential time).

Networks come back as :class:`PersistedModule` records (class name, init kwargs,
tensors, children); the stored ``module_src`` is an opaque string.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

import numpy as np
import torch

__all__ = ["AllowListUnpickler", "EasyDict", "PersistedModule", "UnsafePickleError", "safe_load"]

MAX_OPCODES = 5_000_000         # a TADNE-size snapshot (G, D, G_ema) needs well under 1 M
MAX_MEMO = 2_000_000
MAX_TENSOR_DIMS = 8
MAX_MODULE_DEPTH = 64
_SCALARS = (str, bytes, int, float, bool, type(None))


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something this reader refuses (a global, an operation)."""


class EasyDict(dict[Any, Any]):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict (no attribute magic, which
    pickle's APPEND would otherwise reach through ``__getattr__``)."""


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
        if not isinstance(modules, dict):
            return {}
        return {k: v for k, v in modules.items()
                if isinstance(k, str) and isinstance(v, PersistedModule)}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``name -> tensor`` of parameters and buffers, like ``state_dict()``.

        Walks each module once (a hostile file can share children to make a naive
        walk exponential) and refuses trees nested implausibly deep.
        """
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        pending: list[tuple[str, PersistedModule, int]] = [("", self, 0)]
        while pending:
            prefix, module, depth = pending.pop()
            if id(module) in seen:
                raise UnsafePickleError("a network module appears twice in the tree")
            if depth > MAX_MODULE_DEPTH:
                raise UnsafePickleError("network modules are nested too deeply")
            seen.add(id(module))
            for slot in ("_parameters", "_buffers"):
                values = module.state.get(slot) or {}
                if not isinstance(values, dict):
                    raise UnsafePickleError(f"module {slot} is not a dict")
                for name, value in values.items():
                    if isinstance(name, str) and isinstance(value, torch.Tensor):
                        out[prefix + name] = value
            for name, child in module.children.items():
                pending.append((f"{prefix}{name}.", child, depth + 1))
        return out


# ---------------------------------------------------------------------------
# Stand-ins for the globals a network pickle names


def _reconstruct_persistent_obj(meta: Any) -> PersistedModule:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafePickleError("persistent object without a class meta dict")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise UnsafePickleError("persistent object meta lacks class_name or state")
    version, src = meta.get("version", 0), meta.get("module_src")
    return PersistedModule(class_name=class_name[:200],
                           version=version if isinstance(version, int) else 0,
                           state=dict(state), module_src=src if isinstance(src, str) else "")


def _scalar_keys(pairs: Any, what: str) -> list[tuple[Any, Any]]:
    items = list(pairs.items()) if isinstance(pairs, dict) else list(pairs)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], _SCALARS)):
            raise UnsafePickleError(f"{what} keys must be plain scalars")
    return items


def _ordered_dict(*args: Any) -> collections.OrderedDict[Any, Any]:
    if len(args) > 1:
        raise UnsafePickleError("OrderedDict takes at most one argument")
    return collections.OrderedDict(_scalar_keys(args[0], "OrderedDict") if args else [])


def _easy_dict(*args: Any) -> EasyDict:
    if len(args) > 1:
        raise UnsafePickleError("EasyDict takes at most one argument")
    return EasyDict(_scalar_keys(args[0], "EasyDict") if args else [])


def _scalar_set(kind: type[set[Any]] | type[frozenset[Any]]) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if len(args) > 1:
            raise UnsafePickleError(f"{kind.__name__} takes at most one argument")
        members = list(args[0]) if args else []
        if not all(isinstance(m, _SCALARS) for m in members):
            raise UnsafePickleError(f"{kind.__name__} members must be plain scalars")
        return kind(members)

    return build


# numpy ------------------------------------------------------------------------

_NUMPY_KINDS = {"b", "i", "u", "f", "c"}


class NumpyDtype:
    """A numpy dtype named by the file; ``BUILD`` state is validated, never given to numpy."""

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype

    def _build(self, state: Any) -> None:
        # numpy >= 1.x pickles dtypes with state (3, byteorder, None, None, None, elsize,
        # alignment, flags); only the byte order carries information for plain numbers.
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)
                and all(isinstance(v, int) for v in state[5:8])):
            raise UnsafePickleError("numpy dtype state is not that of a plain number type")
        if state[5] not in (-1, self.dtype.itemsize) or state[6] not in (-1, self.dtype.alignment):
            raise UnsafePickleError("numpy dtype state disagrees with its type")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = False) -> NumpyDtype:
    if not isinstance(spec, str) or len(spec) > 8:
        raise UnsafePickleError("numpy dtype spec must be a short string")
    try:
        dtype = np.dtype(spec)
    except TypeError:
        raise UnsafePickleError("unknown numpy dtype") from None
    if dtype.kind not in _NUMPY_KINDS or dtype.itemsize > 16 or dtype.fields is not None:
        raise UnsafePickleError("only plain numeric numpy dtypes are accepted")
    return NumpyDtype(dtype)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, NumpyDtype) or not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalar without a numeric dtype and its bytes")
    if len(data) != dtype.dtype.itemsize:
        raise UnsafePickleError("numpy scalar bytes do not fit its dtype")
    return np.frombuffer(data, dtype=dtype.dtype)[0].item()


class NumpyArrayClass:
    """What ``numpy.ndarray`` resolves to: only usable as ``_reconstruct``'s first argument."""


class NumpyArray:
    """A numpy array rebuilt from validated (dtype, shape, bytes): ``.array`` after BUILD."""

    def __init__(self) -> None:
        self.array: np.ndarray[Any, Any] | None = None

    def _build(self, state: Any) -> None:
        if self.array is not None:
            raise UnsafePickleError("numpy array state given twice")
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)
                and isinstance(state[2], NumpyDtype) and isinstance(state[3], bool)
                and isinstance(state[4], bytes)):
            raise UnsafePickleError("numpy array state is not (version, shape, dtype, "
                                    "fortran, bytes)")
        _, shape, dtype, fortran, data = state
        if len(shape) > MAX_TENSOR_DIMS or not all(isinstance(s, int) and s >= 0
                                                   for s in shape):
            raise UnsafePickleError("numpy array shape is not a short tuple of sizes")
        if math.prod(shape) * dtype.dtype.itemsize != len(data):
            raise UnsafePickleError("numpy array bytes do not fit its shape and dtype")
        self.array = np.frombuffer(data, dtype=dtype.dtype).reshape(
            shape, order="F" if fortran else "C").copy()


def _numpy_reconstruct(cls: Any, shape: Any, typecode: Any) -> NumpyArray:
    if cls is not NumpyArrayClass:
        raise UnsafePickleError("numpy _reconstruct of something other than an ndarray")
    return NumpyArray()


# torch ------------------------------------------------------------------------

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
    "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL = 1001


@dataclass(frozen=True)
class StorageType:
    dtype: torch.dtype


@dataclass(frozen=True)
class _StorageRef:
    dtype: torch.dtype
    key: str
    numel: int


@dataclass(frozen=True)
class LoadedStorage:
    """A storage blob's elements, parsed and size-checked: [numel] of ``dtype``."""

    flat: torch.Tensor


def _load_storage_from_bytes(data: Any) -> LoadedStorage:
    """Parse one legacy ``torch.save(storage)`` blob: four small pickles, then
    ``int64 numel`` and the raw elements. Every size is checked against the blob."""
    if not isinstance(data, bytes):
        raise UnsafePickleError("tensor storage is not a byte string")
    f = io.BytesIO(data)

    def small_pickle(persistent: Callable[[Any], Any] | None = None) -> Any:
        reader = AllowListUnpickler(f, len(data) - f.tell(), allowed=_STORAGE_GLOBALS,
                                    persistent_load=persistent)
        return reader.load()

    if small_pickle() != _TORCH_MAGIC or small_pickle() != _TORCH_PROTOCOL:
        raise UnsafePickleError("tensor storage is not a torch.save blob")
    sys_info = small_pickle()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise UnsafePickleError("tensor storage is not little-endian")
    refs: list[_StorageRef] = []

    def persistent_load(pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[5] is None and not refs):
            raise UnsafePickleError("tensor storage reference is malformed")
        ref = _StorageRef(dtype=pid[1].dtype, key=pid[2], numel=pid[4])
        refs.append(ref)
        return ref

    ref = small_pickle(persistent_load)
    if not isinstance(ref, _StorageRef) or small_pickle() != [ref.key]:
        raise UnsafePickleError("tensor storage blob holds something other than one storage")
    element = torch.empty((), dtype=ref.dtype).element_size()
    header = f.read(8)
    if len(header) != 8 or struct.unpack("<q", header)[0] != ref.numel or ref.numel < 0:
        raise UnsafePickleError("tensor storage size header disagrees with its reference")
    payload = f.read()
    if len(payload) != ref.numel * element:
        raise UnsafePickleError("tensor storage bytes do not match its size")
    flat = torch.frombuffer(bytearray(payload), dtype=ref.dtype) if payload else \
        torch.empty(0, dtype=ref.dtype)
    return LoadedStorage(flat=flat)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not (isinstance(value, tuple) and len(value) <= MAX_TENSOR_DIMS
            and all(isinstance(v, int) and v >= 0 for v in value)):
        raise UnsafePickleError(f"tensor {what} is not a short tuple of non-negative ints")
    return value


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> torch.Tensor:
    if not isinstance(storage, LoadedStorage):
        raise UnsafePickleError("tensor rebuilt from something that is not a storage")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides) or not isinstance(storage_offset, int) or storage_offset < 0:
        raise UnsafePickleError("tensor view does not fit its storage")
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=storage.flat.dtype)
    last = storage_offset + sum((s - 1) * st for s, st in zip(shape, strides, strict=True))
    if last >= storage.flat.numel():
        raise UnsafePickleError("tensor view reaches past the end of its storage")
    return storage.flat.as_strided(shape, strides, storage_offset).clone()


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("parameter rebuilt from something that is not a tensor")
    return data  # plain tensors: nothing downstream needs autograd state from the file


_NETWORK_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): _scalar_set(set),
    ("builtins", "frozenset"): _scalar_set(frozenset),
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _easy_dict,
    ("dnnlib", "EasyDict"): _easy_dict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): NumpyArrayClass,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}
_STORAGE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch", name): StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()}
_BUILDABLE = (NumpyDtype, NumpyArray)


# ---------------------------------------------------------------------------
# The unpickler


class _BoundedFile:
    """Reads never ask for more than the file still has (a length field claiming
    terabytes must not allocate them), and never more than ``limit`` in all."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self.raw = raw
        self.left = limit

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.raw.read(n)
        self.left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readline(self) -> bytes:
        line = self.raw.readline(min(self.left, 1 << 16))
        self.left -= len(line)
        return line


def _counted(op: Callable[[Any], None]) -> Callable[[Any], None]:
    def run(self: AllowListUnpickler) -> None:
        self._ops += 1
        if self._ops > MAX_OPCODES:
            raise UnsafePickleError(f"pickle runs more than {MAX_OPCODES} operations")
        op(self)
    return run


_BASE_OPS: dict[int, Callable[[Any], None]] = pickle._Unpickler.dispatch


class AllowListUnpickler(pickle._Unpickler):
    """Pure-Python unpickler with an allow-list of globals and its own BUILD.

    The pure-Python implementation is used on purpose: its dispatch table is where
    ``BUILD``, dict keys and the work bound are enforced. Network pickles are small
    apart from their tensor bytes, which are read in bulk.
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = {
        code: _counted(op) for code, op in _BASE_OPS.items()}
    # what the pure-Python base keeps (typeshed describes only the C unpickler's API)
    stack: list[Any]
    memo: dict[int, Any]
    append: Callable[[Any], None]
    read: Callable[[int], bytes]
    pop_mark: Callable[[], list[Any]]

    def __init__(self, file: IO[bytes], size: int, *,
                 allowed: dict[tuple[str, str], Any] | None = None,
                 persistent_load: Callable[[Any], Any] | None = None) -> None:
        super().__init__(_BoundedFile(file, size))
        self._allowed = _NETWORK_GLOBALS if allowed is None else allowed
        self._persistent = persistent_load
        self._ops = 0

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(str(module)[:200], str(name)[:200])]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {str(module)[:80]}.{str(name)[:80]}: not on the "
                "allow-list (the file may be malicious or not a StyleGAN network pickle)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafePickleError("persistent ids are not used by network pickles")
        return self._persistent(pid)

    # --- the operations a hostile file could abuse -------------------------------

    def _memo_put(self) -> None:
        if len(self.memo) >= MAX_MEMO:
            raise UnsafePickleError(f"pickle memo grows past {MAX_MEMO} entries")

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if type(target) not in _BUILDABLE:
            raise UnsafePickleError(f"refusing BUILD on {type(target).__name__[:40]}: only "
                                    "numpy dtypes and arrays take state")
        target._build(state)

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._set_items(self.stack[-1], [(key, value)])

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._set_items(self.stack[-1], list(zip(items[::2], items[1::2], strict=False)))

    def _set_items(self, target: Any, pairs: list[tuple[Any, Any]]) -> None:
        if type(target) not in (dict, collections.OrderedDict, EasyDict):
            raise UnsafePickleError("SETITEM on something that is not a dict")
        for key, value in pairs:
            if not isinstance(key, _SCALARS):
                raise UnsafePickleError("dict keys must be plain scalars")
            target[key] = value

    def load_dict(self) -> None:
        items = self.pop_mark()
        built: dict[Any, Any] = {}
        self._set_items(built, list(zip(items[::2], items[1::2], strict=False)))
        self.append(built)

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set or not all(isinstance(m, _SCALARS) for m in items):
            raise UnsafePickleError("set members must be plain scalars")
        target.update(items)

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        if not all(isinstance(m, _SCALARS) for m in items):
            raise UnsafePickleError("frozenset members must be plain scalars")
        self.append(frozenset(items))

    def load_append(self) -> None:
        value = self.stack.pop()
        target = self.stack[-1]
        if type(target) is not list:
            raise UnsafePickleError("APPEND on something that is not a list")
        target.append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not list:
            raise UnsafePickleError("APPENDS on something that is not a list")
        target.extend(items)

    def load_put(self) -> None:
        self._memo_put()
        _BASE_OPS[pickle.PUT[0]](self)

    def load_binput(self) -> None:
        self._memo_put()
        _BASE_OPS[pickle.BINPUT[0]](self)

    def load_long_binput(self) -> None:
        self._memo_put()
        _BASE_OPS[pickle.LONG_BINPUT[0]](self)

    def load_memoize(self) -> None:
        self._memo_put()
        _BASE_OPS[pickle.MEMOIZE[0]](self)

    def load_bytearray8(self) -> None:
        # The base allocates the claimed length before reading: 8 bytes could ask for 2**63.
        (claimed,) = struct.unpack("<Q", self.read(8))
        data = self.read(claimed)
        if len(data) != claimed:
            raise UnsafePickleError("bytearray claims more bytes than the file holds")
        self.append(bytearray(data))

    def load_inst(self) -> None:
        raise UnsafePickleError("INST/OBJ opcodes are not used by network pickles")

    load_obj = load_inst

    def load_newobj(self) -> None:
        args, cls = self.stack.pop(), self.stack.pop()
        if cls not in (_ordered_dict, _easy_dict) or not isinstance(args, tuple):
            raise UnsafePickleError("NEWOBJ is only accepted for dict types")
        self.append(cls(*args))

    def load_newobj_ex(self) -> None:
        raise UnsafePickleError("NEWOBJ_EX is not used by network pickles")

    def load_ext1(self) -> None:
        raise UnsafePickleError("copyreg extension codes are not used by network pickles")

    load_ext2 = load_ext4 = load_ext1

    def load_reduce(self) -> None:
        args, func = self.stack.pop(), self.stack.pop()
        if not isinstance(args, tuple) or not callable(func) or isinstance(func, type):
            raise UnsafePickleError("REDUCE of something that is not an allowed function")
        self.stack.append(func(*args))


# The opcodes whose behaviour is replaced above, counted like all the others.
for _name, _code in [("load_build", pickle.BUILD), ("load_setitem", pickle.SETITEM),
                     ("load_dict", pickle.DICT),
                     ("load_setitems", pickle.SETITEMS), ("load_additems", pickle.ADDITEMS),
                     ("load_frozenset", pickle.FROZENSET), ("load_append", pickle.APPEND),
                     ("load_appends", pickle.APPENDS), ("load_put", pickle.PUT),
                     ("load_binput", pickle.BINPUT), ("load_long_binput", pickle.LONG_BINPUT),
                     ("load_memoize", pickle.MEMOIZE), ("load_bytearray8", pickle.BYTEARRAY8),
                     ("load_inst", pickle.INST),
                     ("load_obj", pickle.OBJ), ("load_newobj", pickle.NEWOBJ),
                     ("load_newobj_ex", pickle.NEWOBJ_EX), ("load_ext1", pickle.EXT1),
                     ("load_ext2", pickle.EXT2), ("load_ext4", pickle.EXT4),
                     ("load_reduce", pickle.REDUCE)]:
    AllowListUnpickler.dispatch[_code[0]] = _counted(getattr(AllowListUnpickler, _name))


def safe_load(file: IO[bytes]) -> Any:
    """Unpickle ``file`` with the allow-list. Every failure is an ``UnpicklingError``
    whose message names no object from the file."""
    try:
        size = os.fstat(file.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        size = len(file.getbuffer()) if isinstance(file, io.BytesIO) else 1 << 40
    try:
        return AllowListUnpickler(file, size).load()
    except pickle.UnpicklingError:
        raise
    except RecursionError:
        raise pickle.UnpicklingError("pickle nests too deeply") from None
    except MemoryError:
        raise pickle.UnpicklingError("pickle needs more memory than it may use") from None
    except Exception as exc:  # malformed: stack underflow, missing memo entries, bad args
        raise pickle.UnpicklingError(f"malformed pickle ({type(exc).__name__})") from None
