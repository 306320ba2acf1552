"""The tensors of a TorchScript archive, read without running any of its code.

OpenAI released CLIP as TorchScript archives. ``torch.jit.load`` compiles the
archive's ``code/`` and runs it: a class's ``__setstate__`` is TorchScript the file
brings, and a crafted one can write files (``torch.from_file(shared=True)``) or do
whatever else TorchScript can. Only the tensors are needed, and they are plain data:

* ``<archive>/data.pkl`` pickles the module tree: each module is a ``__torch__.<name>``
  object rebuilt with ``NEWOBJ`` and given its attributes with ``BUILD``; tensors are
  ``torch._utils._rebuild_tensor_v2`` over a persistent storage id
  ``('storage', <dtype>Storage, key, device, numel)``;
* ``<archive>/data/<key>`` holds each storage's raw little-endian bytes.

This reader parses ``data.pkl`` with the allow-list unpickler of
:mod:`~ml_backend.weights.safe_pickle` (its bounds on work and memory, its refusals),
where a ``__torch__`` class is only a name and ``BUILD`` only records the attributes:
no ``__setstate__`` of any kind runs, nothing in ``code/`` is read as code. Which
attributes are parameters or buffers (what ``state_dict()`` holds) is read from the
``__parameters__`` / ``__buffers__`` lists TorchScript writes at the top of each class
in ``code/``, as text, by a regular expression. Every storage's size is checked against
its member before a byte is read.
"""

from __future__ import annotations

import ast
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ml_backend.weights.safe_pickle import (
    _STORAGE_DTYPES,
    MAX_MODULE_DEPTH,
    AllowListUnpickler,
    LoadedStorage,
    StorageType,
    UnsafePickleError,
    _counted,
    _ordered_dict,
    _rebuild_parameter,
    _rebuild_tensor_v2,
)

__all__ = ["read_torchscript_tensors"]

_CLASS_NAME = re.compile(r"^__torch__(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_CODE_CLASS = re.compile(r"^class ([A-Za-z_][A-Za-z0-9_]*)\(Module\):\n"
                         r"((?:  __[a-z_]+__ = \[.*\]\n)*)", re.M)
_SLOT_LIST = re.compile(r"^  __(parameters|buffers)__ = (\[.*\])$", re.M)
_MAX_CODE_BYTES = 64 << 20


@dataclass
class ScriptObject:
    """A ``__torch__`` object as data: its class's qualified name and its attributes."""

    class_name: str
    state: dict[str, Any] = field(default_factory=dict)

    def _build(self, state: Any) -> None:
        if self.state or not isinstance(state, dict) or \
                not all(isinstance(k, str) for k in state):
            raise UnsafePickleError("TorchScript object state is not a dict of attributes")
        self.state = state


class _ScriptClass:
    """What a ``__torch__.*`` global resolves to: a name, usable only by NEWOBJ."""

    def __init__(self, qualified: str) -> None:
        self.qualified = qualified


_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _ScriptUnpickler(AllowListUnpickler):
    """The allow-list unpickler, plus ``__torch__`` classes as names and BUILD as a record."""

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(AllowListUnpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{str(module)[:200]}.{str(name)[:200]}"
        if _CLASS_NAME.match(qualified):
            return _ScriptClass(qualified)
        return super().find_class(module, name)

    def load_newobj(self) -> None:
        args, cls = self.stack.pop(), self.stack.pop()
        if isinstance(cls, _ScriptClass) and args == ():
            self.append(ScriptObject(cls.qualified))
        elif cls is _ordered_dict and isinstance(args, tuple):
            self.append(cls(*args))
        else:
            raise UnsafePickleError("NEWOBJ is only accepted for TorchScript objects")

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, ScriptObject):
            raise UnsafePickleError("BUILD is only accepted on TorchScript objects")
        target._build(state)



# REDUCE stays the base's: a _ScriptClass is not callable, so it is refused there
for _name, _code in [("load_newobj", pickle.NEWOBJ), ("load_build", pickle.BUILD)]:
    _ScriptUnpickler.dispatch[_code[0]] = _counted(getattr(_ScriptUnpickler, _name))


def _archive_root(names: list[str]) -> str:
    roots = {name[:-len("/data.pkl")] for name in names
             if name.endswith("/data.pkl") and name.count("/") == 1}
    if len(roots) != 1:
        raise UnsafePickleError("not a TorchScript archive: no single <archive>/data.pkl")
    return roots.pop()


def _storage_loader(archive: zipfile.ZipFile, root: str) -> Any:
    loaded: dict[str, LoadedStorage] = {}

    def persistent_load(pid: Any) -> LoadedStorage:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], StorageType) and isinstance(pid[2], str)
                and pid[2].isascii() and pid[2].isdecimal() and isinstance(pid[4], int)
                and pid[4] >= 0):
            raise UnsafePickleError("tensor storage reference is malformed")
        dtype, key, numel = pid[1].dtype, pid[2], pid[4]
        if key in loaded:
            if loaded[key].flat.dtype != dtype or loaded[key].flat.numel() != numel:
                raise UnsafePickleError("one storage is named with two sizes or types")
            return loaded[key]
        try:
            info = archive.getinfo(f"{root}/data/{key}")
        except KeyError:
            raise UnsafePickleError("a tensor storage is missing from the archive") from None
        size = numel * torch.empty((), dtype=dtype).element_size()
        if info.file_size != size:
            raise UnsafePickleError("a tensor storage's bytes do not match its size")
        payload = archive.read(info)
        flat = torch.frombuffer(bytearray(payload), dtype=dtype) if size else \
            torch.empty(0, dtype=dtype)
        loaded[key] = LoadedStorage(flat=flat)
        return loaded[key]

    return persistent_load


def _slots_by_class(archive: zipfile.ZipFile, root: str) -> dict[str, set[str]]:
    """``__torch__.<module>.<Class>`` -> names of its parameters and buffers, from the
    ``__parameters__``/``__buffers__`` lines of ``code/`` (text; nothing is run)."""
    slots: dict[str, set[str]] = {}
    read = 0
    for info in archive.infolist():
        name = info.filename
        if not (name.startswith(f"{root}/code/__torch__/") and name.endswith(".py")):
            continue
        read += info.file_size
        if read > _MAX_CODE_BYTES:
            raise UnsafePickleError("the archive's code is implausibly large")
        module = "__torch__." + name[len(f"{root}/code/__torch__/"):-3].replace("/", ".")
        text = archive.read(info).decode("utf-8", errors="replace")
        for match in _CODE_CLASS.finditer(text):
            names: set[str] = set()
            for slot in _SLOT_LIST.finditer(match.group(2)):
                try:
                    listed = ast.literal_eval(slot.group(2))
                except (ValueError, SyntaxError):
                    raise UnsafePickleError("a parameter list in code/ is malformed") from None
                if not (isinstance(listed, list) and all(isinstance(n, str) for n in listed)):
                    raise UnsafePickleError("a parameter list in code/ is malformed")
                names.update(listed)
            slots[f"{module}.{match.group(1)}"] = names
    return slots


def _flatten(root: ScriptObject, slots: dict[str, set[str]]) -> dict[str, torch.Tensor]:
    """``state_dict()``'s view: each module's parameters and buffers, by dotted name."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    pending: list[tuple[str, ScriptObject, int]] = [("", root, 0)]
    while pending:
        prefix, module, depth = pending.pop()
        if id(module) in seen:
            raise UnsafePickleError("a module appears twice in the tree")
        if depth > MAX_MODULE_DEPTH:
            raise UnsafePickleError("modules are nested too deeply")
        seen.add(id(module))
        wanted = slots.get(module.class_name)
        for name, value in module.state.items():
            if isinstance(value, torch.Tensor) and (wanted is None or name in wanted):
                out[prefix + name] = value
            elif isinstance(value, ScriptObject):
                pending.append((f"{prefix}{name}.", value, depth + 1))
    return out


def read_torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The archive's parameters and buffers by name (``state_dict()`` without loading
    the module). Raises :class:`UnsafePickleError` (an ``UnpicklingError``) for any
    file that is not a well-formed archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            root = _archive_root(archive.namelist())
            info = archive.getinfo(f"{root}/data.pkl")
            with archive.open(info) as data:
                tree = _ScriptUnpickler(data, info.file_size, allowed=_GLOBALS,
                                        persistent_load=_storage_loader(archive, root)).load()
            slots = _slots_by_class(archive, root)
    except pickle.UnpicklingError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UnsafePickleError(f"unreadable archive ({type(exc).__name__})") from None
    except RecursionError:
        raise UnsafePickleError("the archive's pickle nests too deeply") from None
    except Exception as exc:  # malformed pickle: stack underflow, bad arguments
        raise UnsafePickleError(f"malformed archive ({type(exc).__name__})") from None
    if not isinstance(tree, ScriptObject):
        raise UnsafePickleError("the archive's data is not a module")
    return _flatten(tree, slots)
