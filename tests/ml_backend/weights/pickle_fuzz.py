"""Fuzz the checkpoint reader's unpickler: ``python -m tests.ml_backend.weights.pickle_fuzz``.

Runs in its own process (``test_pickle_fuzz.py`` starts it) so that a crash of the
interpreter — the failure a memory-unsafe unpickler produces — is seen as a crash
and not as a dead test runner. Two kinds of input, both through ``read_checkpoint``:

- programs assembled from every pickle opcode with arguments of the right shape
  (and some of the wrong one), with globals drawn from the allow-list and from
  names an attacker would want;
- mutations of real inputs: a small NVIDIA network snapshot and every hand-built
  hostile pickle (bytes flipped, inserted, deleted, truncated, spliced).

Asserted for every input: ``read_checkpoint`` returns or raises ``CheckpointError``
(one line, bounded), it finishes quickly, and an audit hook sees nothing executed,
imported, opened or mutated on a class while it runs. The input being tried is
written to ``--last`` first, so a crash leaves the file that caused it.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import faulthandler
import pickle
import pickletools
import struct
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from ml_backend.weights import CheckpointError, read_checkpoint
from ml_backend.weights.safe_pickle import _NETWORK_GLOBALS
from tests.ml_backend import builders
from tests.ml_backend.weights import hostile_pickles as hostile

SLOW_S = 5.0  # one input may take this long; the hostile corpus takes milliseconds each

# Audit events that mean the file made the process do something besides building data.
FORBIDDEN_EVENTS = (
    "exec", "compile", "import", "open", "os.", "subprocess.", "socket.", "ctypes.",
    "shutil.", "pickle.find_class", "marshal.", "code.__new__", "function.__new__",
    "object.__setattr__", "object.__delattr__", "builtins.input", "sys._getframe",
    "urllib.", "http.", "webbrowser.", "glob.", "tempfile.",
)

ATTACKER_GLOBALS = [
    ("os", "system"), ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"),
    ("subprocess", "Popen"), ("torch", "load"), ("numpy", "load"), ("pickle", "loads"),
    ("collections", "defaultdict"), ("builtins", "object"), ("builtins", "type"),
    ("numpy.core.multiarray", "_reconstruct\nos"), ("torch._utils", "_rebuild_tensor"),
    ("torch", "Tensor"), ("dnnlib.util", "EasyDict.__getattr__"), ("", ""),
]
STORAGE_GLOBALS = [("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "LongStorage")]
GLOBALS = [*sorted(_NETWORK_GLOBALS), *STORAGE_GLOBALS, *ATTACKER_GLOBALS]


class Watch:
    """An audit hook that records forbidden events while ``active``."""

    def __init__(self) -> None:
        self.active = False
        self.allowed_open: str = ""
        self.seen: list[str] = []
        sys.addaudithook(self)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or not event.startswith(FORBIDDEN_EVENTS):
            return
        if event == "open" and args and str(args[0]) == self.allowed_open:
            return
        self.seen.append(f"{event} {str(args)[:200]}")


# ---------------------------------------------------------------------------
# inputs


def _arg_for(opcode: pickletools.OpcodeInfo, draw: Any) -> bytes:
    """Bytes for ``opcode``'s argument: mostly well-formed, sometimes lying."""
    arg = opcode.arg
    if arg is None:
        return b""
    name = arg.name
    if opcode.code == "c":  # GLOBAL: module\nname\n
        module, attr = draw(st.sampled_from(GLOBALS))
        return f"{module}\n{attr}\n".encode()
    if arg.n > 0 and name not in ("long1", "long4"):
        if name.startswith(("uint", "int")):
            value = draw(st.one_of(st.integers(0, 16), st.integers(0, 256 ** arg.n - 1)))
            return value.to_bytes(arg.n, "little")
        return draw(st.binary(min_size=arg.n, max_size=arg.n))
    if name in ("long1", "long4"):
        raw = draw(st.binary(max_size=16))
        return (bytes([len(raw)]) if name == "long1" else struct.pack("<i", len(raw))) + raw
    if arg.n in (pickletools.TAKEN_FROM_ARGUMENT1, pickletools.TAKEN_FROM_ARGUMENT4,
                 pickletools.TAKEN_FROM_ARGUMENT4U, pickletools.TAKEN_FROM_ARGUMENT8U):
        width = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                 pickletools.TAKEN_FROM_ARGUMENT4U: 4,
                 pickletools.TAKEN_FROM_ARGUMENT8U: 8}[arg.n]
        payload = draw(st.one_of(st.text(max_size=12).map(str.encode), st.binary(max_size=24)))
        length = draw(st.one_of(st.just(len(payload)), st.integers(0, 256 ** width - 1)))
        fmt = {1: "<B", 4: "<I" if arg.n != pickletools.TAKEN_FROM_ARGUMENT4 else "<i",
               8: "<Q"}[width]
        try:
            return struct.pack(fmt, length) + payload
        except struct.error:
            return struct.pack(fmt, len(payload)) + payload
    # UP_TO_NEWLINE arguments: decimals, floats, repr strings, names
    line = draw(st.one_of(
        st.integers(-10**30, 10**30).map(str), st.floats(allow_nan=True).map(repr),
        st.text(alphabet="'\"\\abcxn0123456789 L.", max_size=20),
        st.sampled_from(["00", "01", "'x'", "True", "1L"])))
    return line.encode("utf-8", "replace") + b"\n"


@st.composite
def opcode_programs(draw: Any) -> bytes:
    ops = draw(st.lists(st.sampled_from(pickletools.opcodes), max_size=60))
    body = b"".join(op.code.encode("latin-1") + _arg_for(op, draw) for op in ops)
    head = draw(st.sampled_from([b"\x80\x04", b"\x80\x02", b"\x80\x05", b""]))
    return head + body + draw(st.sampled_from([b".", b""]))


def _corpus() -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        tree = builders.nvidia_generator(
            builders.nvidia_kwargs(img_resolution=8, channel_base=64, channel_max=16), seed=1)
        real = builders.write_nvidia_pkl(Path(tmp) / "real.pkl", tree).read_bytes()
        torch_files = []
        for legacy in (True, False):  # what torch.save writes (rosinality checkpoints)
            path = Path(tmp) / f"torch-{legacy}.pt"
            torch.save({"g_ema": {"style.1.weight": torch.ones(2, 2)}, "latent_avg": torch.ones(2)},
                       path, _use_new_zipfile_serialization=not legacy)
            torch_files.append(path.read_bytes())
    return [real, *torch_files, *hostile.ALL.values()]


@st.composite
def mutations(draw: Any, corpus: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, *pickle.BINPUT,
                                             *pickle.BUILD, *pickle.REDUCE, *pickle.MEMOIZE]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            other = draw(st.sampled_from(corpus))
            start = draw(st.integers(0, max(len(other) - 1, 0)))
            data[at:at] = other[start:start + draw(st.integers(1, 64))]
    return bytes(data)


# ---------------------------------------------------------------------------
# the property


class Target:
    """Feeds one input through ``read_checkpoint`` and checks what came back."""

    def __init__(self, workdir: Path, last: Path) -> None:
        self.path = workdir / "candidate.pkl"
        self.last = last
        self.watch = Watch()
        self.watch.allowed_open = str(self.path)
        self.tried = 0
        self.loaded = 0

    def __call__(self, data: bytes) -> None:
        self.last.write_bytes(data)
        self.path.write_bytes(data)
        self.watch.seen.clear()
        start = time.perf_counter()
        self.watch.active = True
        try:
            read_checkpoint(self.path)
            self.loaded += 1
        except CheckpointError as exc:
            message = str(exc)
            if "\n" in message or len(message) > 1000:
                raise AssertionError(f"error is not one bounded line: {message[:300]!r}")
        finally:
            self.watch.active = False
            self.tried += 1
        took = time.perf_counter() - start
        if self.watch.seen:
            raise AssertionError(f"the file made the process act: {self.watch.seen[:5]}")
        if took > SLOW_S:
            raise AssertionError(f"one {len(data)}-byte input took {took:.1f} s")


def run(seconds: float, last: Path) -> Target:
    corpus = _corpus()
    with tempfile.TemporaryDirectory() as tmp:
        target = Target(Path(tmp), last)
        for codec in ("raw-unicode-escape", "unicode-escape", "ascii", "latin-1", "utf-8"):
            codecs.lookup(codec)  # the unpickler's text opcodes import these on first use
        for data in corpus:  # warm up: lazy imports torch makes on first use are not the file's
            target.watch.active = False
            with contextlib.suppress(CheckpointError):
                read_checkpoint(_write(Path(tmp) / "warm.pkl", data))
        strategy = st.one_of(opcode_programs(), mutations(corpus))
        deadline = time.monotonic() + seconds
        round_ = 0
        while time.monotonic() < deadline:
            round_ += 1

            @seed(round_)
            @settings(max_examples=100, deadline=None, database=None, derandomize=False,
                      phases=[Phase.generate], report_multiple_bugs=False,
                      suppress_health_check=list(HealthCheck))
            @given(strategy)
            def one_round(data: bytes) -> None:
                target(data)

            one_round()
        return target


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--last", type=Path, default=Path("pickle-fuzz-last.bin"),
                        help="where the input being tried is kept (the culprit after a crash)")
    args = parser.parse_args(argv)
    faulthandler.enable()
    # torch.load warns about protocols; printing a warning reads its source line (an open)
    warnings.simplefilter("ignore")
    start = time.monotonic()
    target = run(args.seconds, args.last)
    sys.stdout.write(f"pickle fuzz: {target.tried} inputs in {time.monotonic() - start:.0f} s, "
                     f"{target.loaded} loaded, the rest refused with one CheckpointError line; "
                     "nothing executed\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
