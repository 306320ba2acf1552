"""The web page in real headless Chromium, walked as a person would, checked with axe-core.

first page (only sign-in visible) → register → a character by name → generate with
upscale 2 → open it large → its share link works signed out → an API key made, copied,
used and revoked → sign out. Uses Debian's chromium through Playwright (no browser
download). Saves the screenshots the README
shows into docs/screenshots/ when ``CLIPGAN_SCREENSHOTS=1`` (``make screenshots``), and
into the test's own folder otherwise, so a test run leaves the checkout as it was.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port, start_serve, stop_serve

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
README_SHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERIOUS = ("serious", "critical")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _accessible(page: Any, where: str) -> None:
    """axe-core finds no serious or critical violation on what is shown now."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    serious = [(v["id"], v["help"], [n["target"] for n in v["nodes"]])
               for v in results.response["violations"] if v["impact"] in SERIOUS]
    assert serious == [], f"axe-core, {where}: {serious}"


def test_a_visit_from_first_page_to_sign_out(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_serve(tmp_path, port)
    shots = README_SHOTS if os.environ.get("CLIPGAN_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            context = browser.new_context(viewport={"width": 1100, "height": 800})
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
            page = context.new_page()
            blocked: list[str] = []
            page.on("request", lambda r: blocked.append(r.url)
                    if not r.url.startswith(base) else None)
            problems: list[str] = []  # a 404 (favicon) or a script error shows here
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{base}/")

            # first page: sign-in only, not both forms
            expect(page.locator("#login-form")).to_be_visible()
            expect(page.locator("#register-form")).to_be_hidden()
            expect(page.locator("#studio")).to_be_hidden()
            _accessible(page, "first page")
            page.get_by_role("button", name="Create an account").click()
            expect(page.locator("#register-form")).to_be_visible()
            expect(page.locator("#login-form")).to_be_hidden()
            form = page.locator("#register-form")
            form.get_by_label("Username").fill("alice")
            form.get_by_label("Email").fill("alice@example.com")
            form.get_by_label("Password").fill("a long password")
            form.get_by_role("button", name="Create account").click()
            expect(page.locator("#studio")).to_be_visible()
            expect(page.locator("#who")).to_have_text("alice")
            expect(page.locator("#demo")).to_be_visible()  # demo weights are labelled

            # a character by name, in one generator pass; the same name is the same face
            page.get_by_label("Name", exact=True).fill("Asuka")
            page.get_by_role("button", name="Show this character").click()
            sample = page.locator("#sample img")
            expect(sample).to_be_visible(timeout=60_000)
            assert sample.evaluate("img => img.naturalWidth") > 0
            expect(page.locator("#sample figcaption")).to_contain_text("Asuka")
            page.get_by_role("button", name="Use this seed").first.click()
            expect(page.locator("#generate-form input[name=seed]")).to_have_value("Asuka")
            _accessible(page, "studio")

            # generate with upscale 2
            page.get_by_label("Prompt", exact=True).fill("blue hair, smile | hat:-0.5")
            page.get_by_label("Steps", exact=True).fill("12")
            page.get_by_label("Upscale").select_option("2")
            page.get_by_role("button", name="Generate", exact=True).click()
            card = page.locator(".job").first
            expect(card.locator("img.result")).to_be_visible(timeout=120_000)
            expect(card.locator(".status")).to_contain_text("succeeded")
            expect(card.locator(".details")).to_contain_text("score")
            expect(card.locator(".details")).to_contain_text("2× upscale")
            expect(card.locator(".download")).to_be_visible()
            page.screenshot(path=str(shots / "studio.png"), full_page=True)

            # open it large: the picture, its score, seed and creativity, a share link
            card.get_by_role("button", name="Open large").click()
            viewer = page.locator("#viewer")
            expect(viewer).to_be_visible()
            expect(viewer.locator("img")).to_be_visible()
            expect(viewer.locator(".details")).to_contain_text("seed")
            expect(viewer.locator(".details")).to_contain_text("creativity")
            _accessible(page, "picture opened large")
            page.screenshot(path=str(shots / "viewer.png"))
            viewer.get_by_role("button", name="Copy share link").click()
            expect(page.locator("#message")).to_have_text("Share link copied.")
            link = page.evaluate("navigator.clipboard.readText()")
            assert link == viewer.locator("#share-link").input_value()
            assert link.startswith(f"{base}/v1/jobs/") and "sig=" in link

            # the share link works for someone signed out (a fresh browser, no token)
            stranger = browser.new_context()
            shared = stranger.request.get(link)
            assert shared.status == 200 and shared.headers["content-type"] == "image/png"
            small = _png_size(page.context.request.get(
                f"{base}/v1/sample.png?seed=Asuka").body())
            assert _png_size(shared.body()) == (small[0] * 2, small[1] * 2), "not upscaled 2×"
            stranger.close()

            # use the picture's seed for the next one, then close the viewer
            viewer.get_by_role("button", name="Close").click()
            expect(viewer).to_be_hidden()
            card.get_by_role("button", name="Use this seed").click()
            seed = page.locator("#generate-form input[name=seed]").input_value()
            expect(card.locator(".details")).to_contain_text(f"seed {seed}")

            assert problems == [], f"the browser console reported errors: {problems}"

            # bad input gets a message, not a broken page
            page.get_by_label("Steps", exact=True).fill("0")
            page.evaluate("document.querySelector('input[name=steps]').removeAttribute('min')")
            page.get_by_role("button", name="Generate", exact=True).click()
            expect(page.locator("#message")).to_contain_text("steps")

            # phone width, and the gallery survives a reload
            page.set_viewport_size({"width": 390, "height": 844})
            page.reload()
            expect(page.locator(".job img.result").first).to_be_visible()
            page.screenshot(path=str(shots / "phone.png"), full_page=True)

            # a key for a program: shown once, copied, works, revoked from the list
            page.locator("#account summary").click()
            keys = page.locator("#key-form")
            keys.get_by_label("Key name").fill("my <b>bot</b>")
            keys.get_by_role("button", name="Create key").click()
            expect(page.locator("#new-key")).to_be_visible()
            keys.get_by_role("button", name="Copy key").click()
            expect(page.locator("#message")).to_have_text("Key copied.")
            key = page.evaluate("navigator.clipboard.readText()")
            assert key.startswith("cgk_") and key == page.locator("#new-key-value").input_value()
            row = page.locator("#keys li")
            expect(row).to_have_count(1)
            expect(row.locator(".key-name")).to_have_text("my <b>bot</b>")  # text, not markup
            expect(row).to_contain_text("read and write")
            expect(row).to_contain_text("expires")
            _accessible(page, "API keys")
            with_key = {"Authorization": f"Bearer {key}"}
            assert context.request.get(f"{base}/v1/jobs", headers=with_key).status == 200
            page.once("dialog", lambda dialog: dialog.accept())
            row.get_by_role("button", name="Revoke key my <b>bot</b>").click()
            expect(page.locator("#keys li")).to_have_count(0)
            assert context.request.get(f"{base}/v1/jobs", headers=with_key).status == 401
            page.reload()
            expect(page.locator("#new-key-value")).to_have_value("")  # never shown again

            # delete a picture: asked first, gone from the page and from its link
            cards = page.locator(".job")
            expect(cards.first.locator(".download")).to_be_visible()  # the reloaded list
            before = cards.count()
            doomed = cards.first
            link = doomed.locator(".download").get_attribute("href")
            page.once("dialog", lambda dialog: dialog.dismiss())  # changed their mind
            doomed.get_by_role("button", name="Delete").click()
            expect(cards).to_have_count(before)
            page.once("dialog", lambda dialog: dialog.accept())
            doomed.get_by_role("button", name="Delete").click()
            expect(page.locator("#message")).to_have_text("Picture deleted.")
            expect(cards).to_have_count(before - 1)
            assert context.request.get(base + link if link.startswith("/") else link).status == 404

            # sign out: back to the first page, and the old token no longer reads jobs
            token = page.evaluate("localStorage.getItem('clipgan.access')")
            page.get_by_role("button", name="Sign out").click()
            expect(page.locator("#login-form")).to_be_visible()
            expect(page.locator("#studio")).to_be_hidden()
            after = context.request.get(f"{base}/v1/jobs",
                                        headers={"Authorization": f"Bearer {token}"})
            assert after.status == 401

            # delete the account: the password confirms it, then nothing of it is left
            login = page.locator("#login-form")
            login.get_by_label("Username").fill("alice")
            login.get_by_label("Password").fill("a long password")
            login.get_by_role("button", name="Sign in").click()
            expect(page.locator("#studio")).to_be_visible()
            page.locator("#account summary").click()
            deletion = page.locator("#delete-account-form")
            deletion.get_by_label("Your password").fill("not my password")
            page.once("dialog", lambda dialog: dialog.accept())
            deletion.get_by_role("button", name="Delete my account").click()
            expect(page.locator("#message")).to_contain_text("password is wrong")
            expect(page.locator("#studio")).to_be_visible()
            deletion.get_by_label("Your password").fill("a long password")
            page.once("dialog", lambda dialog: dialog.accept())
            deletion.get_by_role("button", name="Delete my account").click()
            expect(page.locator("#message")).to_have_text("Your account was deleted.")
            expect(page.locator("#login-form")).to_be_visible()
            gone = context.request.post(f"{base}/v1/auth/token", form={
                "username": "alice", "password": "a long password"})
            assert gone.status == 401
            browser.close()
        assert blocked == [], f"the page loaded something from elsewhere: {blocked}"
    finally:
        stop_serve(server)
