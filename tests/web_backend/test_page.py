"""The web page in real headless Chromium: register, submit, watch the picture appear.

Uses Debian's chromium through Playwright (no browser download). Saves the
screenshots the README shows into docs/screenshots/.
"""

import os
import shutil
from pathlib import Path

import pytest

from tests.servers import free_port, start_serve, stop_serve

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_register_submit_and_watch_the_image_appear(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    server = start_serve(tmp_path, port)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            blocked: list[str] = []
            page.on("request", lambda r: blocked.append(r.url)
                    if not r.url.startswith(f"http://127.0.0.1:{port}") else None)
            problems: list[str] = []  # a 404 (favicon) or a script error shows here
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/")
            # what a person sees first: sign-in only, not both forms
            expect(page.locator("#login-form")).to_be_visible()
            expect(page.locator("#register-form")).to_be_hidden()
            expect(page.locator("#studio")).to_be_hidden()
            page.click("#show-register")
            expect(page.locator("#register-form")).to_be_visible()
            expect(page.locator("#login-form")).to_be_hidden()
            page.fill("#register-form input[name=username]", "alice")
            page.fill("#register-form input[name=email]", "alice@example.com")
            page.fill("#register-form input[name=password]", "a long password")
            page.click("#register-form button[type=submit]")
            expect(page.locator("#studio")).to_be_visible()
            expect(page.locator("#who")).to_have_text("alice")
            expect(page.locator("#demo")).to_be_visible()  # demo weights are labelled
            page.fill("textarea[name=prompt]", "blue hair, smile | hat:-0.5")
            page.fill("input[name=steps]", "12")
            page.fill("input[name=seed]", "Asuka")
            page.click("#generate-form button[type=submit]")
            card = page.locator(".job").first
            expect(card.locator("img.result")).to_be_visible(timeout=120_000)
            expect(card.locator(".status")).to_contain_text("succeeded")
            expect(card.locator(".download")).to_be_visible()
            page.screenshot(path=str(SHOTS / "studio.png"), full_page=True)
            assert problems == [], f"the browser console reported errors: {problems}"
            # bad input gets a message, not a broken page
            page.fill("input[name=steps]", "0")
            page.evaluate("document.querySelector('input[name=steps]').removeAttribute('min')")
            page.click("#generate-form button[type=submit]")
            expect(page.locator("#message")).to_contain_text("steps")
            # phone width, and the gallery survives a reload
            page.set_viewport_size({"width": 390, "height": 844})
            page.reload()
            expect(page.locator(".job img.result").first).to_be_visible()
            page.screenshot(path=str(SHOTS / "phone.png"), full_page=True)
            browser.close()
        assert blocked == [], f"the page loaded something from elsewhere: {blocked}"
    finally:
        stop_serve(server)
