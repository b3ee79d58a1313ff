"""The search page in a real browser: Debian's chromium, headless, driven by selenium against a
live uvicorn server on 127.0.0.1. It searches by uploading an image and by typing a query, checks
the rendered ids against the API's answer, and checks that corpus text holding ``<script>`` or an
``onerror=`` attribute renders as text.

Set ``CONTRASTKIT_SCREENSHOT=path.png`` to save the image-search page (docs/serve.png).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("selenium", reason="selenium is in the test extra")
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from contrastkit.index import build_index, load_index
from contrastkit.serve import ServeSettings, create_app, create_app_from_run
from contrastkit.serve.embedder import Embedder
from contrastkit.train.run import load_run
from contrastkit.train.search import INDEX_FILE

from .conftest import free_port, png_bytes, wait_healthy

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (`make setup` installs them: "
    "apt-get install chromium chromium-driver)",
)

EVIL = [
    "<script>window.__pwned = 1</script> a document with a script tag",
    '<img src=x onerror="window.__pwned = 2"> a document with an onerror attribute',
]
EVIL_LABEL = '<b onmouseover="window.__pwned = 3">label</b>'
REBOUND = "rebound.example"  # an attacker's name that resolves to 127.0.0.1 (DNS rebinding)


def _live(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=60)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--window-size=1000,760",
        f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1",  # a DNS-rebinding name, resolved here
    ):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def image_url(image_run: Path) -> Iterator[str]:
    yield from _live(create_app_from_run(image_run))


@pytest.fixture(scope="module")
def evil_url(text_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The text run over an index whose first documents carry HTML in their text and label."""
    _, task, _ = load_run(text_run)
    meta = load_index(text_run / INDEX_FILE).metadata
    texts = EVIL + [m["text"] for m in meta[len(EVIL) :]]
    labels = [EVIL_LABEL] * len(EVIL) + [m["label"] for m in meta[len(EVIL) :]]
    index = build_index(
        task.embed_texts(texts, side="document"),  # (N, D)
        backend="exact",
        metric="cosine",
        ids=[f"doc-{i}" if i >= len(EVIL) else f'<i id="x{i}">evil</i>' for i in range(len(texts))],
        metadata=[{"label": label, "text": text} for label, text in zip(labels, texts)],
    )
    path = tmp_path_factory.mktemp("evil") / "evil.ckindex"
    index.save(path)
    yield from _live(create_app(Embedder.from_run(text_run), path, ServeSettings()))


def _open(browser: webdriver.Chrome, url: str) -> WebDriverWait:
    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    return wait


def _rendered(browser: webdriver.Chrome, wait: WebDriverWait, n: int) -> list:
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == n)
    return browser.find_elements(By.CSS_SELECTOR, "#results .result")


def test_upload_an_image_and_see_the_ranked_thumbnails(
    browser: webdriver.Chrome, image_url: str, image_run: Path, tmp_path: Path
) -> None:
    _, task, _ = load_run(image_run)
    query = tmp_path / "query.png"
    query.write_bytes(png_bytes(task.examples(1)[0][0]))
    expected = httpx.post(
        image_url + "/search/upload",
        files={"file": ("query.png", query.read_bytes(), "image/png")},
        data={"k": "8"},
    ).json()["results"]

    wait = _open(browser, image_url)
    assert not browser.find_element(By.ID, "image-form").get_attribute("hidden")
    assert browser.find_element(By.ID, "text-form").get_attribute("hidden")  # image-only model
    browser.find_element(By.ID, "file").send_keys(str(query))
    browser.find_element(By.ID, "search-image").click()
    results = _rendered(browser, wait, 8)
    assert [r.get_attribute("data-id") for r in results] == [hit["id"] for hit in expected]
    assert [r.find_element(By.CLASS_NAME, "rid").text for r in results] == [
        hit["id"] for hit in expected
    ]
    assert results[0].find_element(By.CLASS_NAME, "score").text == f"{expected[0]['score']:.4f}"
    wait.until(  # every thumbnail is a decoded PNG from /thumb/{position}
        lambda d: all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            for img in d.find_elements(By.CSS_SELECTOR, "#results img.thumb")
        )
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results img.thumb")) == 8
    if os.environ.get("CONTRASTKIT_SCREENSHOT"):
        time.sleep(0.3)
        browser.save_screenshot(os.environ["CONTRASTKIT_SCREENSHOT"])


def test_type_a_query_and_html_in_the_corpus_renders_as_text(
    browser: webdriver.Chrome, evil_url: str
) -> None:
    wait = _open(browser, evil_url)
    assert browser.find_element(By.ID, "image-form").get_attribute("hidden")  # text-only model
    box = browser.find_element(By.ID, "query")
    box.clear()
    box.send_keys(EVIL[1])
    k = browser.find_element(By.ID, "k-text")
    k.clear()
    k.send_keys("5")
    browser.find_element(By.ID, "search-text").click()
    results = _rendered(browser, wait, 5)
    expected = httpx.post(evil_url + "/search", json={"query": EVIL[1], "k": 5}).json()["results"]
    assert [r.get_attribute("data-id") for r in results] == [hit["id"] for hit in expected]
    snippets = [r.find_element(By.CLASS_NAME, "snippet").text for r in results]
    for doc in EVIL:  # both documents are among the hits and show their markup literally
        assert doc in snippets
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .label")]
    assert EVIL_LABEL in labels
    assert '<i id="x1">evil</i>' in [r.find_element(By.CLASS_NAME, "rid").text for r in results]
    time.sleep(0.5)  # give an injected onerror a chance to fire
    assert browser.execute_script("return window.__pwned === undefined")
    # no element came from the data: no <script>, <img>, <b> or <i> inside the results
    assert browser.find_elements(By.CSS_SELECTOR, "#results script, #results img, #results b") == []
    assert browser.find_elements(By.CSS_SELECTOR, "#results i") == []


def test_bad_input_shows_the_server_message(browser: webdriver.Chrome, evil_url: str) -> None:
    wait = _open(browser, evil_url)
    browser.find_element(By.ID, "query").send_keys("quickly")
    k = browser.find_element(By.ID, "k-text")
    k.clear()
    k.send_keys("1000")
    browser.find_element(By.ID, "search-text").click()
    wait.until(lambda d: "k: got 1000" in d.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "status").get_attribute("class") == "error"


def test_the_page_sends_the_api_key_for_searches_and_thumbnails(
    browser: webdriver.Chrome, image_run: Path, tmp_path: Path
) -> None:
    _, task, _ = load_run(image_run)
    query = tmp_path / "query.png"
    query.write_bytes(png_bytes(task.examples(1)[0][0]))
    app = create_app_from_run(image_run, settings=ServeSettings(api_key="page-key"))
    for url in _live(app):
        wait = _open(browser, url)
        browser.execute_script("sessionStorage.clear()")
        assert not browser.find_element(By.ID, "key-form").get_attribute("hidden")
        browser.find_element(By.ID, "file").send_keys(str(query))
        browser.find_element(By.ID, "search-image").click()  # no key yet: the 401 is shown
        wait.until(lambda d: "API key" in d.find_element(By.ID, "status").text)
        browser.find_element(By.ID, "key").send_keys("page-key")
        browser.find_element(By.ID, "search-image").click()
        results = _rendered(browser, wait, 8)
        assert results[0].get_attribute("data-id")
        wait.until(  # thumbnails come through fetch() with the key, not a bare <img src>
            lambda d: all(
                d.execute_script("return arguments[0].naturalWidth", img)
                for img in d.find_elements(By.CSS_SELECTOR, "#results img.thumb")
            )
        )


def test_the_api_docs_page_renders_without_a_network(
    browser: webdriver.Chrome, image_url: str
) -> None:
    """/docs is Swagger UI from this server's own files (the machine has no network): the
    browser renders the operations of the OpenAPI schema."""
    browser.get(image_url + "/docs")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")) > 3)
    paths = {
        e.text.strip() for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    }
    assert {"/search", "/embed", "/health"} <= {p.replace("\u200b", "") for p in paths}


@pytest.fixture
def attacker_page(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """Another site: a folder served on http://localhost:PORT (a different site from
    127.0.0.1), for pages that post to the service."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(10)


def test_another_site_cannot_use_a_keyless_server(
    browser: webdriver.Chrome, image_run: Path, attacker_page: tuple[Path, str]
) -> None:
    """A form on another site posting to /admin/reload (and /search/upload) is refused, and a
    page reached through a rebound DNS name gets nothing; the service's own page still works."""
    live = _live(create_app_from_run(image_run))
    url = next(live)
    try:
        folder, site = attacker_page
        for target in ("/admin/reload", "/search/upload"):
            (folder / "post.html").write_text(
                f'<form id="f" method="POST" action="{url}{target}" enctype="multipart/form-data">'
                '<input name="k" value="1"></form><script>document.getElementById("f").submit()'
                "</script>"
            )
            browser.get(f"{site}/post.html")
            wait = WebDriverWait(browser, 30)
            wait.until(lambda d: d.current_url.startswith(url))  # the form was sent
            wait.until(lambda d: "same origin" in d.find_element(By.TAG_NAME, "body").text)
            answer = json.loads(browser.find_element(By.TAG_NAME, "body").text)
            assert answer["field"] == "Sec-Fetch-Site" and answer["value"] == '"cross-site"'
        assert httpx.get(url + "/health").json()["index_version"] == 1  # never reloaded
        port = url.rsplit(":", 1)[1]
        browser.get(f"http://{REBOUND}:{port}/health")
        answer = json.loads(browser.find_element(By.TAG_NAME, "body").text)
        assert answer["field"] == "Host" and REBOUND in answer["value"]  # not the health report
        _open(browser, url)  # the service's own page loads and its POSTs pass (same origin)
        browser.execute_script(
            "window.__reload = fetch('/admin/reload', {method: 'POST'}).then(r => r.status)"
        )
        status = browser.execute_async_script(
            "window.__reload.then(arguments[arguments.length - 1])"
        )
        assert status == 200
    finally:
        live.close()
