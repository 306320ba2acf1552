"""Request ids in responses and log lines; the JSON log format."""

import json
import logging

from fastapi.testclient import TestClient

from web_backend.asgi.logs import JsonFormatter, RequestIdFilter


def test_every_response_carries_a_request_id(client: TestClient, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="clipgan.access"):
        made = client.get("/healthz")
        given = client.get("/nope", headers={"X-Request-ID": "support-ticket-42"})
        hostile = client.get("/healthz", headers={"X-Request-ID": "bad id\nwith newline"})
    assert len(made.headers["x-request-id"]) == 32
    assert given.headers["x-request-id"] == "support-ticket-42" and given.status_code == 404
    assert "\n" not in hostile.headers["x-request-id"]
    assert any("GET /nope 404" in r.getMessage() for r in caplog.records)


def test_json_log_lines_parse_and_carry_the_id() -> None:
    record = logging.LogRecord("clipgan", logging.WARNING, __file__, 1, "disk %s", ("full",),
                               None)
    RequestIdFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "disk full" and entry["level"] == "WARNING"
    assert entry["request_id"] == "-"
