"""Settings refuse unsafe secrets outside dev; dev keeps a generated key across restarts."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from web_backend.core.settings import WebSettings


@pytest.mark.parametrize(("secret", "message"), [
    (None, "CLIPGAN_SECRET_KEY is not set"),
    ("tooshort", "too short or a known default"),
    ("changeme", "too short or a known default"),
    (" " * 40, "too short or a known default"),
    ("\t" * 20 + "abc" + " " * 20, "too short or a known default"),
    ("a" * 64, "too short or a known default"),  # long, but one letter: not random
])
def test_production_refuses_missing_or_weak_secrets(secret, message: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPGAN_SECRET_KEY", raising=False)
    monkeypatch.delenv("CLIPGAN_ENV", raising=False)
    with pytest.raises(ValidationError, match=message):
        WebSettings(secret_key=secret)


def test_dev_generates_and_keeps_a_key(tmp_path: Path) -> None:
    first = WebSettings(env="dev", data={"dir": tmp_path}).signing_key()
    again = WebSettings(env="dev", data={"dir": tmp_path}).signing_key()
    assert first == again and len(first) >= 32
    assert (tmp_path / "dev-secret-key").stat().st_mode & 0o077 == 0


def test_default_database_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    url = WebSettings(env="dev", data={"dir": tmp_path}).data.resolved_database_url
    assert url == f"sqlite:///{tmp_path.resolve() / 'clipgan.db'}"


@pytest.mark.parametrize("secret", [None, " " * 40, "short"])
def test_the_http_transport_needs_the_ingress_secret(secret) -> None:
    from web_backend.core.settings import MLClientSettings

    with pytest.raises(ValidationError, match="needs CLIPGAN_ML_URL and CLIPGAN_ML_SECRET"):
        MLClientSettings(transport="http", url="http://10.0.0.5:8100", secret=secret)
