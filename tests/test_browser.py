"""The web page in Debian's chromium (Playwright): upload a clip, see hits, play one, see the chart.

Skipped when /usr/bin/chromium is absent (CI installs it from .ci/SYSTEM_PACKAGES_CI.txt).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import uvicorn

from api.app import create_app

torch.set_num_threads(1)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium (apt-get install chromium)")


@pytest.fixture
def live_server(api_store):
    """A real uvicorn server on 127.0.0.1 with an OS-chosen port, in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(api_store.settings), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_upload_clip_see_results_and_play_a_segment(live_server, api_store, api_clip):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(live_server + "/")
            page.set_input_files("#clip-file", str(api_clip))
            page.check("#clip-whole")
            page.click("#search-btn")
            page.wait_for_selector("#results tbody tr.hit", timeout=20_000)
            rows = page.locator("#results tbody tr.hit")
            assert rows.count() == len(api_store.segments)  # k=10 > 9 stored segments
            first = rows.nth(0)
            segment_id = int(first.get_attribute("data-segment"))
            assert segment_id in {s["id"] for s in api_store.segments}

            first.locator("button.play").click()
            page.wait_for_function("() => { const a = document.querySelector('#results audio'); return a && a.readyState >= 2; }", timeout=15_000)
            src = first.locator("audio").get_attribute("src")
            assert src.startswith(f"/v1/segments/{segment_id}/audio")
            status, ctype = page.evaluate("async (src) => { const r = await fetch(src); return [r.status, r.headers.get('content-type')]; }", src)
            assert (status, ctype) == (200, "audio/wav")
            duration = page.evaluate("document.querySelector('#results audio').duration")
            seg = next(s for s in api_store.segments if s["id"] == segment_id)
            assert duration == pytest.approx(min(seg["end_s"] + 0.25, 3.0) - max(seg["start_s"] - 0.25, 0.0), abs=0.01)

            # The statistics chart was drawn (some non-white pixels on the canvas).
            page.wait_for_function("() => /rows/.test(document.querySelector('#stats-status').textContent)", timeout=10_000)
            painted = page.evaluate(
                "() => { const c = document.querySelector('#stats-chart'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"
            )
            assert painted > 500
        finally:
            browser.close()
