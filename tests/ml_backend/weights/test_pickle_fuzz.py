"""The fuzzer (``pickle_fuzz.py``) in CI: a bounded run in its own process, so that an
interpreter crash fails the test instead of killing the runner."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ml_backend.weights.pickle_fuzz import Watch

FUZZ_SECONDS = float(os.environ.get("CLIPGAN_FUZZ_SECONDS", "40"))
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_fuzzed_pickles_never_crash_escape_or_execute(tmp_path: Path) -> None:
    last = tmp_path / "last.bin"
    done = subprocess.run(
        [sys.executable, "-m", "tests.ml_backend.weights.pickle_fuzz",
         "--seconds", str(FUZZ_SECONDS), "--last", str(last)],
        cwd=ROOT, capture_output=True, text=True, timeout=FUZZ_SECONDS * 3 + 120)
    tail = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, (
        f"fuzzer exited {done.returncode} (negative: killed by a signal); the input being "
        f"tried was {last.read_bytes()[:400]!r}\n{tail}")
    assert "nothing executed" in done.stdout


def test_the_watch_sees_code_being_run() -> None:
    """The fuzzer's audit hook is not vacuous: it sees what a malicious pickle would do."""
    sys.modules.pop("email.mime.audio", None)  # so that importing it is a fresh import
    watch = Watch()
    watch.active = True
    try:
        compile("1", "<pickle>", "eval")
        __import__("email.mime.audio")
    finally:
        watch.active = False
    compile("2", "<later>", "eval")
    assert [event.split()[0] for event in watch.seen][:2] == ["compile", "import"]
    assert not any("<later>" in event for event in watch.seen)
