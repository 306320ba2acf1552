"""The Python client reads server-sent events the way the spec frames them."""

from __future__ import annotations

import pytest

from clipgan.client import sse_events

STREAM = (b'id: 1\nevent: status\ndata: {"prompt": "cat\xe2\x80\xa8ears\xc2\x85!"}\n\n'
          b": keep-alive\r\n\r\n"
          b"event: progress\r\ndata: {\"step\": 2}\r\n\r\n"
          b"event: done\rdata: line one\rdata: line two\r\r")


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(STREAM)])
def test_events_split_only_where_the_spec_says_in_any_chunking(size: int) -> None:
    chunks = [STREAM[i:i + size] for i in range(0, len(STREAM), size)]
    assert list(sse_events(chunks)) == [
        ("status", '{"prompt": "cat\u2028ears\x85!"}'),   # U+2028 and NEL are not line ends
        ("progress", '{"step": 2}'),
        ("done", "line one\nline two"),
    ]
