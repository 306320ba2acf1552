"""Hand-assembled hostile pickles: each class of attack on an allow-list unpickler.

Shared by the regression tests and the fuzzer (which also mutates these).
"""

from __future__ import annotations

import pickle
import struct


def op(code: bytes, arg: bytes = b"") -> bytes:
    return code + arg


def global_(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def text(value: str) -> bytes:
    raw = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def binbytes(value: bytes) -> bytes:
    return pickle.BINBYTES + struct.pack("<I", len(value)) + value


def integer(value: int) -> bytes:
    if -(1 << 31) <= value < 1 << 31:
        return pickle.BININT + struct.pack("<i", value)
    raw = value.to_bytes(9, "little", signed=True)
    return pickle.LONG1 + bytes([len(raw)]) + raw


def program(*parts: bytes) -> bytes:
    return pickle.PROTO + b"\x04" + b"".join(parts) + pickle.STOP


# BUILD on a class: with a (dict, slots) state pickle setattr()s onto the class itself.
BUILD_ON_CLASS = program(
    global_("dnnlib.util", "EasyDict"),
    pickle.EMPTY_DICT, pickle.EMPTY_DICT, text("__getattr__"), pickle.NONE, pickle.SETITEM,
    pickle.TUPLE2, pickle.BUILD)
BUILD_ON_NDARRAY_CLASS = program(
    global_("numpy", "ndarray"),
    pickle.NONE, pickle.EMPTY_DICT, text("tolist"), pickle.NONE, pickle.SETITEM,
    pickle.TUPLE2, pickle.BUILD)

# numpy's dtype.__setstate__ trusts elsize: reading past the end of a scalar's bytes.
NUMPY_DTYPE_OVERSIZED = program(
    global_("numpy.core.multiarray", "scalar"),
    global_("numpy", "dtype"), text("f8"), pickle.NEWFALSE, pickle.NEWTRUE, pickle.TUPLE3,
    pickle.REDUCE,
    pickle.MARK, integer(3), text("<"), pickle.NONE, pickle.NONE, pickle.NONE,
    integer(1 << 30), integer(8), integer(0), pickle.TUPLE, pickle.BUILD,
    binbytes(b"\x00" * 8), pickle.TUPLE2, pickle.REDUCE)

# Malformed streams that make a pure-Python unpickler raise IndexError, KeyError...
STACK_UNDERFLOW = program(pickle.REDUCE)
MISSING_MEMO = program(pickle.BINGET + b"\x07")
APPEND_TO_A_DICT = program(pickle.EMPTY_DICT, pickle.NONE, pickle.APPEND)
UNKNOWN_OPCODE = program(b"\xff")


def shared_nesting(depth: int) -> bytes:
    """A list holding the same list twice, ``depth`` times over: 2**depth leaves when
    formatted or walked naively, ~7 bytes per level in the file."""
    parts = [pickle.EMPTY_LIST, pickle.BINPUT + b"\x00", pickle.POP]
    for _ in range(depth):
        parts += [pickle.EMPTY_LIST, pickle.BINGET + b"\x00", pickle.APPEND,
                  pickle.BINGET + b"\x00", pickle.APPEND, pickle.BINPUT + b"\x00", pickle.POP]
    return program(*parts, pickle.BINGET + b"\x00")


def g_ema_holding(body: bytes) -> bytes:
    """``{"G_ema": <body>}``, so the reader gets as far as looking at the network."""
    return pickle.PROTO + b"\x04" + pickle.EMPTY_DICT + text("G_ema") + body[2:-1] + \
        pickle.SETITEM + pickle.STOP


def tuple_keyed_dict(depth: int) -> bytes:
    """A dict key that is a tuple nested ``depth`` deep with sharing: hashing it is
    exponential in ``depth``."""
    parts = [pickle.NONE]
    for _ in range(depth):
        parts += [pickle.BINPUT + b"\x00", pickle.BINGET + b"\x00", pickle.TUPLE2]
    return program(pickle.EMPTY_DICT, *parts, pickle.NONE, pickle.SETITEM)


def deep_tuples(depth: int) -> bytes:
    return program(pickle.NONE, *([pickle.TUPLE1] * depth))


# A length field claiming a terabyte in a file of a few bytes.
HUGE_BYTES_CLAIM = pickle.PROTO + b"\x04" + pickle.BINBYTES8 + struct.pack("<Q", 1 << 40) + b"x"
# The same for BYTEARRAY8, which the stock pure-Python unpickler allocates before reading
# (found by the fuzzer: 3.6 GB zeroed for a 114-byte file).
HUGE_BYTEARRAY_CLAIM = (pickle.PROTO + b"\x05" + pickle.BYTEARRAY8 + struct.pack("<Q", 1 << 34)
                        + b"x")


def storage_blob(*, numel: int, payload: bytes, storage: str = "FloatStorage") -> bytes:
    """A legacy ``torch.save(storage)`` blob whose header says ``numel`` elements."""
    magic = pickle.PROTO + b"\x02" + pickle.LONG1 + bytes([10]) + \
        (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + pickle.STOP
    version = pickle.PROTO + b"\x02" + pickle.BININT2 + struct.pack("<H", 1001) + pickle.STOP
    info = program(pickle.EMPTY_DICT, text("little_endian"), pickle.NEWTRUE, pickle.SETITEM)
    ref = program(pickle.MARK, text("storage"), global_("torch", storage), text("k"),
                  text("cpu"), integer(numel), pickle.NONE, pickle.TUPLE, pickle.BINPERSID)
    keys = program(pickle.EMPTY_LIST, text("k"), pickle.APPEND)
    return magic + version + info + ref + keys + struct.pack("<q", numel) + payload


def tensor_from(blob: bytes, *, offset: int, size: tuple[int, ...],
                stride: tuple[int, ...]) -> bytes:
    """``torch._utils._rebuild_tensor_v2`` of a storage blob with the given view."""
    def int_tuple(values: tuple[int, ...]) -> bytes:
        return pickle.MARK + b"".join(integer(v) for v in values) + pickle.TUPLE

    return program(
        global_("torch._utils", "_rebuild_tensor_v2"), pickle.MARK,
        global_("torch.storage", "_load_from_bytes"), binbytes(blob), pickle.TUPLE1,
        pickle.REDUCE, integer(offset), int_tuple(size), int_tuple(stride), pickle.NEWFALSE,
        global_("collections", "OrderedDict"), pickle.EMPTY_TUPLE, pickle.REDUCE,
        pickle.TUPLE, pickle.REDUCE)


ALL = {
    "build-on-class": BUILD_ON_CLASS, "build-on-ndarray-class": BUILD_ON_NDARRAY_CLASS,
    "numpy-dtype-oversized": NUMPY_DTYPE_OVERSIZED, "stack-underflow": STACK_UNDERFLOW,
    "missing-memo": MISSING_MEMO, "append-to-dict": APPEND_TO_A_DICT,
    "unknown-opcode": UNKNOWN_OPCODE, "shared-nesting": shared_nesting(60),
    "g-ema-shared-nesting": g_ema_holding(shared_nesting(60)),
    "tuple-key": tuple_keyed_dict(60), "deep-tuples": deep_tuples(100_000),
    "huge-bytes-claim": HUGE_BYTES_CLAIM, "huge-bytearray-claim": HUGE_BYTEARRAY_CLAIM,
    "storage-claims-more": tensor_from(storage_blob(numel=1 << 40, payload=b"\x00" * 8),
                                       offset=0, size=(2,), stride=(1,)),
    "view-past-storage": tensor_from(storage_blob(numel=4, payload=b"\x00" * 16),
                                     offset=2, size=(4,), stride=(1,)),
}
