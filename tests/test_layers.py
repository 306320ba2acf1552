"""The layers hold at run time too, and every module's public API is real and documented."""

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ml_backend", "web_backend", "clipgan")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        pkg = importlib.import_module(package)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, f"{package}.")
                  if not m.name.endswith("__main__")]
    return names


@pytest.mark.parametrize("name", _modules())
def test_every_module_declares_a_real_public_api(name: str) -> None:
    module = importlib.import_module(name)
    assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)
               and importlib.util.find_spec(f"{name}.{n}") is None]
    assert missing == [], f"{name}.__all__ names what it does not define: {missing}"
    assert module.__doc__, f"{name} has no docstring saying what it is for"


def test_the_web_side_runs_without_torch_loaded() -> None:
    """A web process on a CPU box: importing the whole app must not load torch."""
    code = ("import sys, web_backend.app, web_backend.jobs.dispatcher, ml_backend.protocol; "
            "print(sorted(m for m in ('torch', 'clip', 'safetensors') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_setting_is_documented_in_the_readme() -> None:
    from ml_backend.settings import MLSettings
    from web_backend.core import settings as web

    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"CLIPGAN_[A-Z0-9_]+", readme))
    groups = [web.DataSettings, web.AuthSettings, web.LimitSettings, web.HttpSettings,
              web.SampleSettings, web.DispatchSettings, web.MLClientSettings, web.WebSettings,
              web.OpenAISettings, web.FeedSettings, web.WebhookSettings]
    variables = {f.validation_alias for g in groups for f in g.model_fields.values()
                 if isinstance(f.validation_alias, str)}
    variables |= {f"CLIPGAN_{name.upper()}" for name in MLSettings.model_fields}
    assert variables - documented == set()
