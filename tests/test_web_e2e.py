"""The upload page in headless Chromium: upload a real photo, see its articleType, take a screenshot.

Needs Debian's chromium (.ci/run installs it and sets FASHION_REQUIRE_BROWSER=1, which turns a
missing browser into a failure instead of a skip).
"""

import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from fashion.serving.app import create_app
from tests.conftest import SAMPLE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """`app` on a free local port, in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


@pytest.fixture
def server(trained):
    with serving(create_app(trained.bundle)) as base:
        yield base


def need_a_browser() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("FASHION_REQUIRE_BROWSER"):
            pytest.fail(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")


def test_upload_a_photo_and_see_its_article_type(server, tmp_path):
    need_a_browser()
    from playwright.sync_api import expect, sync_playwright

    photo = sorted((SAMPLE / "images").glob("*.jpg"))[0]
    expected = httpx.post(f"{server}/v1/predict", files={"file": (photo.name, photo.read_bytes())}).json()
    article = expected["predictions"]["articleType"]["label"]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
                                             ignore_default_args=["--headless=new"])
        page = browser.new_page()
        page.goto(server + "/")
        expect(page.locator("#explain option")).not_to_have_count(0)   # /health answered
        page.set_input_files("#file", str(photo))
        card = page.locator(f'.card[data-filename="{photo.name}"]')
        expect(card).to_have_class("card done", timeout=30_000)
        expect(card.locator('.attr[data-attribute="articleType"] .label')).to_have_text(article)
        for attribute, prediction in expected["predictions"].items():   # review-needed tags are marked as such
            row = card.locator(f'.attr[data-attribute="{attribute}"]')
            expect(row).to_have_attribute("data-status", prediction["status"])
            expect(row).to_have_class(re.compile("accepted" if prediction["status"] == "accepted" else "review"))
        page.check("#heat")
        expect(card.locator("img.heat")).to_be_visible()
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 5_000


def test_review_page_shows_the_queued_photo_and_records_a_correction(trained, tmp_path):
    """The review view: key in, the next queued photo with the model's tags (review-needed ones marked),
    one tag corrected, Confirm: the correction is stored and the queue moves on."""
    need_a_browser()
    from playwright.sync_api import expect, sync_playwright

    from fashion.feedback.store import ReviewStore

    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images")
    with serving(create_app(trained.bundle, api_key="k3y", review=store)) as base:
        photos = sorted((trained.data / "images").glob("*.jpg"))[:2]
        hostile = '<img src=x id=pwned onerror="document.body.dataset.pwned=1">.jpg'   # an upload's name is not markup
        for photo, name in zip(photos, [hostile, photos[1].name]):   # the tiny model is uncalibrated: both are queued
            assert httpx.post(f"{base}/v1/predict", files={"file": (name, photo.read_bytes())}).status_code == 200
        assert store.queued() == 2
        with sync_playwright() as playwright:
            browser, page = open_review_page(playwright, base, "k3y")
            expect(page.locator("#photo img")).to_be_visible(timeout=30_000)
            expect(page.locator("#count")).to_have_text("2 waiting")
            expect(page.locator(".row.review").first).to_be_visible()
            expect(page.locator("#photo .conf")).to_contain_text("<img src=x id=pwned")   # shown as text
            assert page.locator("#pwned").count() == 0 and page.evaluate("document.body.dataset.pwned") is None
            page.fill("#f-articleType", "Jeens")                     # a typo: the page asks, the person says no
            page.once("dialog", lambda dialog: dialog.dismiss())
            page.click("#tags button[type=submit]")
            expect(page.locator("#status")).to_contain_text("articleType='Jeens' (closest: Jeans")
            expect(page.locator("#count")).to_have_text("2 waiting")
            page.fill("#f-articleType", "Jeans")
            page.click("#tags button[type=submit]")
            expect(page.locator("#count")).to_have_text("1 waiting", timeout=30_000)
            page.fill("#f-articleType", "Cargo Jorts")               # a new class, on purpose: confirmed
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#tags button[type=submit]")
            expect(page.locator("#tags p")).to_have_text("The queue is empty.", timeout=30_000)
            browser.close()
        first, second = sorted(store.corrections(), key=lambda c: c[1].read_bytes() != photos[0].read_bytes())
        assert first[2]["articleType"] == "Jeans" and first[1].read_bytes() == photos[0].read_bytes()
        assert second[2]["articleType"] == "Cargo Jorts" and set(first[2]) == set(trained_attributes(base))


def test_a_photo_queued_by_a_model_of_other_attributes_is_reviewed_for_the_served_ones(trained, tmp_path):
    """A reload can serve a model that tags other attributes than the one that queued a photo. The page built its
    form from the queued tags: Confirm sent `colour`, which the served model refuses, and the photo stayed at the
    head of the queue for good. Now the served model's fields; one the queueing model did not tag starts empty, and
    an empty field is no label."""
    from playwright.sync_api import expect, sync_playwright

    from fashion.feedback.store import ReviewStore

    need_a_browser()
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images")
    photo = sorted((trained.data / "images").glob("*.jpg"))[0]
    with serving(create_app(trained.bundle, api_key="k3y", review=store)) as base:
        served = httpx.post(f"{base}/v1/predict", files={"file": (photo.name, photo.read_bytes())}).json()["predictions"]
        store.record(store.next_item()["image_sha256"], {"gender": "Men"})   # queued by the served model: reviewed
        queued = {a: p for a, p in served.items() if a != "season"} | {"colour": {"label": "Red", "confidence": 0.4,
                                                                                   "status": "review"}}
        store.enqueue(photo.read_bytes() + b"\0", "jpg", queued, "old/1", "old.jpg")   # bytes of its own: not reviewed yet
        with sync_playwright() as playwright:
            browser, page = open_review_page(playwright, base, "k3y")
            expect(page.locator("#count")).to_have_text("1 waiting", timeout=30_000)
            expect(page.locator("#f-season")).to_have_value("")
            assert page.locator("#f-colour").count() == 0
            page.click("#tags button[type=submit]")
            expect(page.locator("#tags p")).to_have_text("The queue is empty.", timeout=30_000)
            browser.close()
    labels = [c[2] for c in store.corrections()][-1]
    assert set(labels) == set(served) - {"season"} and labels["articleType"] == served["articleType"]["label"]


def open_review_page(playwright, base: str, key: str):
    """Chromium on the review page, the key given and the first queued photo asked for."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, ignore_default_args=["--headless=new"])
    page = browser.new_page()
    page.goto(base + "/review")
    page.fill("#apikey", key)
    page.click("#start")
    return browser, page


def trained_attributes(base: str) -> list[str]:
    return list(httpx.get(f"{base}/v1/labels").json()["attributes"])
