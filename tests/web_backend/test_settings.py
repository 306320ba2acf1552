"""Settings refuse unsafe secrets outside dev; dev keeps a generated key across restarts."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from web_backend.settings import WebSettings


@pytest.mark.parametrize(("secret", "message"), [
    (None, "CLIPGAN_SECRET_KEY is not set"),
    ("tooshort", "too short or a known default"),
    ("changeme", "too short or a known default"),
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
