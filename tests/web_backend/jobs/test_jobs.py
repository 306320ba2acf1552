"""The jobs API as a user drives it: submit, follow, download, cancel, page, limits."""

import base64
import io
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from tests.ml_backend import hostile_images
from tests.web_backend.helpers import Account, make_admin, read_blob, stored
from web_backend.core.models import Job, utcnow


def png(color: tuple[int, int, int] = (200, 30, 90), size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def finish(app: FastAPI, job_id: str, image: bytes, *, preview: bytes | None = None) -> None:
    """What the dispatcher does when the ML side returns a result."""
    services = app.state.services
    result_key = stored(services, job_id, image)  # pinned and stored first, as it does
    preview_key = stored(services, job_id, preview) if preview else None
    with services.write_session_factory() as session:
        job = session.get(Job, job_id)
        job.status, job.started_at, job.finished_at = "succeeded", utcnow(), utcnow()
        job.result_key, job.preview_key = result_key, preview_key
        job.progress_step, job.seed, job.score = job.progress_total, 7, 0.31
        session.commit()


def submit(account: Account, **fields):
    body = {"prompt": "blue hair, smile", "steps": 20, **fields}
    return account.post("/v1/jobs", json=body)


def test_submit_answers_202_with_position_and_eta(alice: Account) -> None:
    first, second = submit(alice), submit(alice, seed="Asuka")
    assert first.status_code == second.status_code == 202
    job = second.json()
    assert job["status"] == "queued" and job["queue_position"] == 2
    assert job["eta_s"] > 0 and job["progress"] == {"step": 0, "total": 20, "score": None}
    assert job["request"]["seed"] == "Asuka" and "image_prompt" not in job["request"]
    assert alice.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]


def test_a_job_waiting_for_a_gpu_to_start_says_so_with_the_wait(app: FastAPI,
                                                                 alice: Account) -> None:
    throughput = app.state.services.throughput
    plain = submit(alice).json()
    assert plain["starting_gpu"] is False  # nobody said the ML side is at zero
    throughput.replicas, throughput.cold_start_s = 0, 300.0  # the controller: no replica
    waiting = submit(alice).json()
    assert waiting["starting_gpu"] is True and waiting["eta_s"] >= 300
    assert alice.get(f"/v1/jobs/{plain['id']}").json()["starting_gpu"] is True
    throughput.timed_cold_start(42.0)  # a job's first answer after a start of 42 s
    third = submit(alice).json()
    assert third["starting_gpu"] is False and throughput.cold_start_s == 42.0
    throughput.replicas = 0  # at zero again: the next wait told is the one last timed
    fourth = alice.post("/v1/jobs", json={"prompt": "x", "steps": 20})
    assert fourth.status_code == 429  # (3 active jobs at most: the limit, not the GPU)
    assert 42 <= alice.get(f"/v1/jobs/{third['id']}").json()["eta_s"] < 300


def test_bad_job_requests_say_what_to_fix(alice: Account) -> None:
    r = submit(alice, steps=0, psi=3)
    assert r.status_code == 422
    locations = {tuple(e["loc"]) for e in r.json()["detail"]}
    assert locations == {("steps",), ("psi",)}
    assert alice.post("/v1/jobs", content=b"{not json",
                      headers={"Content-Type": "application/json"}).status_code == 422
    wrong_type = alice.post("/v1/jobs", content=b"prompt=x",
                            headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and "application/json" in wrong_type.json()["detail"]
    assert alice.post("/v1/jobs", json=[1, 2]).status_code == 422


def test_idempotency_key_returns_the_same_job(alice: Account) -> None:
    key = {"Idempotency-Key": "submit-123"}
    a = alice.post("/v1/jobs", json={"prompt": "smile"}, headers=key)
    b = alice.post("/v1/jobs", json={"prompt": "smile"}, headers=key)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"] and b.headers["idempotent-replayed"] == "true"
    assert len(alice.get("/v1/jobs").json()["items"]) == 1
    other = alice.post("/v1/jobs", json={"prompt": "frown"}, headers=key)
    assert other.status_code == 409 and "different request" in other.json()["detail"]


def test_image_prompt_by_multipart_or_base64(alice: Account) -> None:
    picture = png()
    multipart = alice.post("/v1/jobs", data={"request": '{"prompt": "smile"}'},
                           files={"image_prompt": ("me.png", picture, "image/png")})
    assert multipart.status_code == 202, multipart.text
    b64 = submit(alice, image_prompt=base64.b64encode(picture).decode())
    assert b64.status_code == 202
    junk = submit(alice, image_prompt=base64.b64encode(b"not an image").decode())
    assert junk.status_code == 422 and "not a readable" in junk.json()["detail"]
    huge = alice.post("/v1/jobs", data={"request": "{}"},
                      files={"image_prompt": ("big.png", b"0" * (10 * 1024 * 1024 + 1))})
    assert huge.status_code == 413
    no_request = alice.post("/v1/jobs", files={"image_prompt": ("me.png", picture)})
    assert no_request.status_code == 422 and "'request' field" in no_request.json()["detail"]


@pytest.mark.parametrize("name", ["png-20000", "png-12000", "jpeg-20000", "TIFF", "EPS", "BMP",
                                  "ICO", "truncated-png"])
def test_hostile_image_prompts_are_a_clear_422(alice: Account, name: str) -> None:
    data = {**hostile_images.BOMBS, **hostile_images.REFUSED_FORMATS,
            **hostile_images.BROKEN}[name]
    for response in (
        alice.post("/v1/jobs", data={"request": '{"prompt": "smile"}'},
                   files={"image_prompt": ("x", data, "image/png")}),
        submit(alice, image_prompt=base64.b64encode(data).decode()),
    ):
        assert response.status_code == 422, response.text
        assert "PNG, JPEG or WebP" in response.json()["detail"] or "megapixels" in response.text
    assert alice.get("/v1/jobs").json()["items"] == []  # nothing queued, nothing stored


def test_the_ml_side_gets_a_small_square_png(app: FastAPI, alice: Account) -> None:
    photo = hostile_images.picture("JPEG", (4000, 3000))
    job = alice.post("/v1/jobs", data={"request": '{"prompt": "smile"}'},
                     files={"image_prompt": ("photo.jpg", photo, "image/jpeg")}).json()
    with app.state.services.session_factory() as session:
        key = session.get(Job, job["id"]).image_prompt_key
    with Image.open(io.BytesIO(read_blob(app.state.services, key))) as kept:
        assert (kept.format, kept.size) == ("PNG", (448, 448))


def test_idempotency_key_covers_the_image_prompt(alice: Account) -> None:
    key = {"Idempotency-Key": "with-picture"}

    def send(color: tuple[int, int, int]):
        return alice.post("/v1/jobs", data={"request": '{"prompt": "smile"}'},
                          files={"image_prompt": ("me.png", png(color), "image/png")}, headers=key)

    assert send((1, 2, 3)).status_code == 202
    assert send((1, 2, 3)).headers["idempotent-replayed"] == "true"
    other = send((200, 2, 3))
    assert other.status_code == 409 and "different request" in other.json()["detail"]


def test_other_users_jobs_are_invisible(alice: Account, bob: Account) -> None:
    job_id = submit(alice).json()["id"]
    for method, path in [("get", ""), ("get", "/image"), ("get", "/preview"),
                         ("get", "/events"), ("delete", "")]:
        r = getattr(bob, method)(f"/v1/jobs/{job_id}{path}")
        assert r.status_code == 404, (method, path)
        assert r.json() == {"detail": f"no job {job_id}"}
    assert bob.get("/v1/jobs").json()["items"] == []


def test_cancel_is_idempotent(alice: Account) -> None:
    job_id = submit(alice).json()["id"]
    first = alice.delete(f"/v1/jobs/{job_id}")
    again = alice.delete(f"/v1/jobs/{job_id}")
    assert first.status_code == again.status_code == 200
    assert again.json()["status"] == "cancelled" and again.json()["queue_position"] is None


def test_image_download_etag_and_signed_links(app: FastAPI, client: TestClient,
                                              alice: Account) -> None:
    job_id = submit(alice).json()["id"]
    early = alice.get(f"/v1/jobs/{job_id}/image")
    assert early.status_code == 409 and "status: queued" in early.json()["detail"]
    picture = png()
    finish(app, job_id, picture, preview=png((0, 0, 0)))
    job = alice.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["seed"] == 7
    r = alice.get(f"/v1/jobs/{job_id}/image")
    assert r.status_code == 200 and r.content == picture
    assert r.headers["content-type"] == "image/png"
    cached = alice.get(f"/v1/jobs/{job_id}/image", headers={"If-None-Match": r.headers["etag"]})
    assert cached.status_code == 304
    # signed links work with no token at all: <img src> and shared links
    assert client.get(job["image_url"]).content == picture
    assert client.get(job["preview_url"]).status_code == 200
    tampered = job["image_url"][:-4] + "0000"
    assert client.get(tampered).status_code == 403
    wrong_kind = job["preview_url"].replace("/preview?", "/image?")
    assert client.get(wrong_kind).status_code == 403
    expired = f"/v1/jobs/{job_id}/image?exp={int(time.time()) - 5}&sig=" + "0" * 64
    assert client.get(expired).status_code == 403
    assert client.get(f"/v1/jobs/{job_id}/image").status_code == 401


def test_listing_pages_with_a_cursor_and_filters(app: FastAPI, alice: Account) -> None:
    make_admin(app, alice)
    alice.put(f"/v1/admin/users/{alice.id}/limits", json={"max_active_jobs": 50,
                                                          "submissions_per_minute": 50})
    ids = [submit(alice, seed=i).json()["id"] for i in range(7)]
    finish(app, ids[0], png())
    seen, cursor = [], None
    while True:
        page = alice.get("/v1/jobs", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    done = alice.get("/v1/jobs", params={"status": "succeeded"}).json()["items"]
    assert [j["id"] for j in done] == [ids[0]]
    assert alice.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert alice.get("/v1/jobs", params={"cursor": "%%%"}).status_code == 400


def test_submission_rate_limit(app: FastAPI, alice: Account) -> None:
    make_admin(app, alice)
    alice.put(f"/v1/admin/users/{alice.id}/limits", json={"max_active_jobs": 100})
    statuses = [submit(alice).status_code for _ in range(10)]
    assert statuses == [202] * 10
    limited = submit(alice)
    assert limited.status_code == 429 and "10 submissions per minute" in limited.json()["detail"]
    assert limited.headers["ratelimit-remaining"] == "0" and int(limited.headers["retry-after"]) > 0


def test_active_job_cap_counts_in_the_database(alice: Account) -> None:
    ids = [submit(alice).json()["id"] for _ in range(3)]
    capped = submit(alice)
    assert capped.status_code == 429 and "3 jobs queued or running" in capped.json()["detail"]
    assert "retry-after" in capped.headers
    alice.delete(f"/v1/jobs/{ids[0]}")
    assert submit(alice).status_code == 202


def test_daily_quota_and_admin_override(app: FastAPI, alice: Account, bob: Account) -> None:
    make_admin(app, alice)
    r = alice.put(f"/v1/admin/users/{bob.id}/limits", json={"daily_images": 2})
    assert r.status_code == 200 and r.json()["limits"]["daily_images"] == 2
    for _ in range(2):
        job = submit(bob).json()["id"]
        finish(app, job, png())
    over = submit(bob)
    assert over.status_code == 429 and "daily quota of 2" in over.json()["detail"]
    assert int(over.headers["retry-after"]) <= 86400
    alice.put(f"/v1/admin/users/{bob.id}/limits", json={"daily_images": None})
    assert submit(bob).status_code == 202


def test_admin_routes_need_an_admin(client: TestClient, app: FastAPI, alice: Account,
                                    bob: Account) -> None:
    assert bob.get("/v1/admin/users").status_code == 403
    make_admin(app, alice)
    users = alice.get("/v1/admin/users").json()
    assert [u["username"] for u in users] == ["alice", "bob"]
    assert alice.post(f"/v1/admin/users/{alice.id}/disable").status_code == 409
    assert alice.post("/v1/admin/users/999/disable").status_code == 404
    assert alice.put(f"/v1/admin/users/{bob.id}/limits",
                     json={"daily_images": 0}).status_code == 422


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/x", "/v1/users/me", "/v1/admin/users"])
def test_everything_personal_needs_a_token(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 401 and r.json()["detail"].startswith("not signed in")
