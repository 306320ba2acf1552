"""Checked access tokens, remembered: what the remembering must not change."""

from __future__ import annotations

import secrets
import time

import pytest

from web_backend.core.security import TokenError, VerifiedTokens, create_access_token

KEY = secrets.token_hex(32).encode()


def test_a_remembered_token_still_expires() -> None:
    tokens = VerifiedTokens(KEY)
    token = create_access_token(KEY, user_id=1, session_id="s", ttl_s=1)
    assert tokens.decode(token).user_id == 1
    time.sleep(2.1)
    with pytest.raises(TokenError):
        tokens.decode(token)


def test_only_the_exact_token_checked_is_remembered() -> None:
    tokens = VerifiedTokens(KEY)
    token = create_access_token(KEY, user_id=1, session_id="s", ttl_s=60)
    tokens.decode(token)
    head, payload, signature = token.split(".")
    forged = create_access_token(b"x" * 64, user_id=2, session_id="s", ttl_s=60)
    altered = ("B" if signature[0] == "A" else "A") + signature[1:]
    for wrong in (f"{head}.{payload}.{altered}",                    # altered signature
                  f"{head}.{forged.split('.')[1]}.{signature}",    # another payload
                  forged):                                         # another key
        with pytest.raises(TokenError):
            tokens.decode(wrong)
    other_key = VerifiedTokens(b"y" * 64)
    with pytest.raises(TokenError):
        other_key.decode(token)


def test_remembered_tokens_stay_within_bounds() -> None:
    tokens = VerifiedTokens(KEY, max_entries=5)
    issued = [create_access_token(KEY, user_id=n, session_id=f"s{n}", ttl_s=60)
              for n in range(20)]
    for token in issued:
        tokens.decode(token)
    assert len(tokens._claims) == 5
    assert [tokens.decode(token).user_id for token in issued] == list(range(20))
