"""Generate typed clients for the clipgan API from its OpenAPI document, strictly.

    python tools/sdk/generate.py http://127.0.0.1:8000/openapi.json sdk/
    python tools/sdk/generate.py openapi.json sdk/ --only python

Writes ``sdk/python/clipgan_api_client`` (openapi-python-client, config beside this
file) and ``sdk/typescript`` (@hey-api/openapi-ts, versions pinned in this folder's
package-lock.json, installed with ``npm ci`` into ``sdk/.npm``). Exits 1 when either
generator warns: a warning means a part of the API the client silently lacks, which
is why the contract test (tests/web_backend/api/test_openapi_sdks.py) runs this too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON_CONFIG = HERE / "openapi-python-client.yaml"
PYTHON_PACKAGE = "clipgan_api_client"  # package_name_override in PYTHON_CONFIG


class GeneratorWarned(Exception):
    """A generator ran but said some part of the document was skipped or unsure."""


def _run(command: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,  # noqa: S603 (our own argv)
                          timeout=600, check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise GeneratorWarned(f"{command[0]} exited {done.returncode}:\n{output}")
    return output


def _warnings(output: str, markers: tuple[str, ...]) -> list[str]:
    """Lines that report trouble. npm's own complaints about the machine's npmrc
    (``npm warn Unknown user config``) are not about our document."""
    return [line for line in output.splitlines()
            if any(m in line.lower() for m in markers) and not line.startswith("npm warn")]


def fetch_document(source: str, into: Path) -> Path:
    """``source``: a URL (the live server's /openapi.json) or a file; copied to ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    target = into / "openapi.json"
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=30) as response:  # noqa: S310 (http(s) only)
            target.write_bytes(response.read())
    elif Path(source).resolve() != target.resolve():
        shutil.copyfile(source, target)
    return target


def generate_python(document: Path, out: Path) -> Path:
    """The openapi-python-client package; its directory (importable from ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    # its post-hooks format the code with ruff: the one next to this Python
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                 f"{os.environ.get('PATH', '')}"}
    output = _run([sys.executable, "-m", "openapi_python_client", "generate",
                   "--path", str(document), "--meta", "none", "--overwrite",
                   "--config", str(PYTHON_CONFIG), "--output-path",
                   str(out / PYTHON_PACKAGE)], cwd=out, env=env)
    trouble = _warnings(output, ("warning", "skipping", "error"))
    if trouble:
        raise GeneratorWarned("openapi-python-client:\n" + output)
    return out / PYTHON_PACKAGE


def generate_typescript(document: Path, out: Path) -> Path:
    """The @hey-api/openapi-ts SDK (fetch client), type-checked with ``tsc --strict``."""
    npm = shutil.which("npm")
    if npm is None:
        raise GeneratorWarned("npm is not installed: the TypeScript SDK needs Node.js and npm")
    tools = out / ".npm"
    tools.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(HERE / name, tools / name)
    _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=tools)
    target = out / "typescript"
    output = _run([str(tools / "node_modules" / ".bin" / "openapi-ts"), "--input",
                   str(document), "--output", str(target)], cwd=tools)
    trouble = _warnings(output, ("warn", "skipping", "unresolvable", "error", "failed"))
    if trouble:
        raise GeneratorWarned("@hey-api/openapi-ts:\n" + output)
    sources = [str(path) for path in sorted(target.rglob("*.ts"))]
    _run([str(tools / "node_modules" / ".bin" / "tsc"), "--noEmit", "--strict",
          "--target", "es2022", "--module", "esnext", "--moduleResolution", "bundler",
          "--lib", "es2022,dom,dom.iterable", "--skipLibCheck", *sources], cwd=tools)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="URL of /openapi.json, or a saved copy")
    parser.add_argument("out", type=Path, help="folder for the document and the SDKs")
    parser.add_argument("--only", choices=("python", "typescript"))
    args = parser.parse_args(argv)
    out = args.out.resolve()  # the generators run inside it
    document = fetch_document(args.source, out)
    try:
        if args.only in (None, "python"):
            print("python:", generate_python(document, out / "python"))
        if args.only in (None, "typescript"):
            print("typescript:", generate_typescript(document, out))
    except GeneratorWarned as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
