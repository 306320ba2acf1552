"""Event streams and signed links: what a leaked link can and cannot do."""

import json
import time
from urllib.parse import parse_qs, urlparse

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.web_backend.helpers import Account, make_admin
from tests.web_backend.jobs.test_jobs import finish, png, submit
from web_backend.core.security import sign_link


def _events(client: TestClient, url: str, **kw) -> list[tuple[str, dict]]:
    out, name = [], None
    with client.stream("GET", url, **kw) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name:
                out.append((name, json.loads(line.removeprefix("data: "))))
    return out


def _expiry(url: str) -> int:
    return int(parse_qs(urlparse(url).query)["exp"][0])


def test_links_handed_out_in_a_stream_never_outlive_the_link_that_opened_it(
        app: FastAPI, client: TestClient, alice: Account) -> None:
    job = submit(alice).json()
    finish(app, job["id"], png(), preview=png((1, 2, 3)))
    opened_until = int(time.time()) + 120  # shorter than the usual link lifetime
    sig = sign_link(app.state.services.signing_key, job["id"], "events", opened_until)
    events = _events(client, f"/v1/jobs/{job['id']}/events?exp={opened_until}&sig={sig}")
    assert [name for name, _ in events][-1] == "done"
    for _, data in events:
        for field in ("events_url", "image_url", "preview_url"):
            assert _expiry(data[field]) <= opened_until, field


def test_a_stream_ends_when_its_credential_expires(app: FastAPI, client: TestClient,
                                                   alice: Account) -> None:
    job = submit(alice).json()  # stays queued: no ML side here
    until = int(time.time()) + 2
    sig = sign_link(app.state.services.signing_key, job["id"], "events", until)
    start = time.monotonic()
    events = _events(client, f"/v1/jobs/{job['id']}/events?exp={until}&sig={sig}")
    assert time.monotonic() - start < 5
    assert [name for name, _ in events] == ["status"]  # no done: the page re-fetches the job
    assert app.state.services.streams.open_streams == 0


def test_links_stop_working_when_the_owner_is_disabled(app: FastAPI, client: TestClient,
                                                       alice: Account, bob: Account) -> None:
    job = submit(alice).json()
    finish(app, job["id"], png(), preview=png((1, 2, 3)))
    links = alice.get(f"/v1/jobs/{job['id']}").json()
    urls = [links["image_url"], links["preview_url"]]
    assert [client.get(url).status_code for url in urls] == [200, 200]
    admin = make_admin(app, bob)
    assert admin.post(f"/v1/admin/users/{alice.id}/disable").status_code == 200
    for url in [*urls, links["events_url"]]:
        refused = client.get(url)
        assert refused.status_code == 403
        assert refused.json() == {"detail": "this link is invalid or has expired"}
    assert admin.post(f"/v1/admin/users/{alice.id}/enable").status_code == 200
    assert client.get(urls[0]).status_code == 200


def test_an_event_is_one_line_for_any_line_reader(app: FastAPI, client: TestClient,
                                                  alice: Account) -> None:
    """httpx's iter_lines (str.splitlines) also breaks on U+2028, U+2029 and NEL: a prompt
    or an error carrying one once cut an event in two and crashed Python clients."""
    from ml_backend.protocol import Failure
    from web_backend.core.models import Job, utcnow

    job = submit(alice, prompt="cat\u2028ears\u2029smile").json()
    assert job["request"]["prompt"] == "cat ears smile"  # stored as plain text
    error = Failure(code="invalid_request", message="part 'a\u2028b\x85c' is odd").public_message
    with app.state.services.write_session_factory() as session:
        row = session.get(Job, job["id"])
        row.status, row.finished_at, row.error = "failed", utcnow(), error
        session.commit()
    events = _events(client, f"/v1/jobs/{job['id']}/events", headers=alice.auth)
    assert [name for name, _ in events] == ["status", "done"]
    assert events[-1][1]["error"] == error
