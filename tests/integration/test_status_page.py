"""The status page (agents/web, agents.admin.status_api) in a real browser: Debian's headless
Chromium driven by Playwright, against a real worker on the real broker and a real HTTP
receiver on loopback.

One topic with one partition and two handlers: `page-ok` delivers (the receiver answers
200), `page-failing` is refused with a 400 that echoes the target's credential, so its record
is dead-lettered. The browser logs in with the admin key, then, while records flow, sees the
handler's matched and delivered rates move, the dead letter in the recent failures and the
dead-letter count of the integration; finds the dead-lettered record's history by topic,
partition and offset; runs a dry run and sees the exact request with its credential masked;
and the rates chart is drawn on its canvas. The page logs no console error, and shows no
secret. The screenshot is written to tests/artifacts/status-page.png (its path printed).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from agents.embedded.receiver import Reply
from tests.integration.test_history import get, hook
from tests.integration.test_secrets import EchoingReceiver
from tests.support.admin_calls import raw, token_for
from tests.support.herald import deploy, wait_until, webhook_target
from tests.support.kafka import produce

CHROMIUM = Path("/usr/bin/chromium")
#: The flags this machine's closed network needs (no background connections, no QUIC).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[1] / "artifacts" / "status-page.png"
ADMIN_KEY = "herald-admin-key"
ADMIN_SECRET = "admin-Secret-for-the-page-7b1f"
WAIT_MS = 60_000
#: The rates chart's "matched" and "delivered" strokes (status.js COLORS, #2563eb and
#: #16a34a): one line can hide the other where the rates are equal.
FLOWING_RGB = ((0x25, 0x63, 0xEB), (0x16, 0xA3, 0x4A))


@pytest.fixture
def page() -> Iterator[Page]:
    """A page of Debian's Chromium (never a browser Playwright downloads), with every
    console error and uncaught exception collected in `page.errors`."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (./run-tests does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            page = context.new_page()
            errors: list[str] = []
            page.on(
                "console",
                lambda message: (
                    errors.append(f"console: {message.text}") if message.type == "error" else None
                ),
            )
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.errors = errors  # type: ignore[attr-defined]
            yield page
        finally:
            browser.close()


def produce_while(bootstrap: str, topic: str, stop: threading.Event) -> threading.Thread:
    """Records for `page-ok`, five every quarter second until `stop` (at most 240 batches)."""

    def run() -> None:
        n = 0
        for _ in range(240):
            if stop.is_set():
                return
            batch = [{"key": f"k{n + i}", "value": {"kind": "ok", "n": n + i}} for i in range(5)]
            produce(bootstrap, topic, batch)
            n += len(batch)
            stop.wait(0.25)

    thread = threading.Thread(target=run, name="page-producer", daemon=True)
    thread.start()
    return thread


def cell(page: Page, table: str, row: str, field: str) -> Any:
    return page.locator(f"#{table} tr[data-{row}] [data-field='{field}']")


def positive(page: Page, selector: str) -> None:
    """Wait until the element's text is a number above zero."""
    page.wait_for_function(
        "sel => { const e = document.querySelector(sel); return e && Number(e.textContent) > 0; }",
        arg=selector,
        timeout=WAIT_MS,
    )


def stroke_pixels(page: Page, chart: str, rgb: tuple[int, int, int]) -> int:
    """Pixels of a chart's canvas near a series' stroke colour (anti-aliasing blurs it)."""
    return page.evaluate(
        """([sel, rgb]) => {
            const canvas = document.querySelector(sel + " canvas");
            if (!canvas || !canvas.width) return 0;
            const context = canvas.getContext("2d");
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4) {
                const near = Math.abs(data[i] - rgb[0]) + Math.abs(data[i + 1] - rgb[1])
                    + Math.abs(data[i + 2] - rgb[2]);
                if (data[i + 3] > 200 && near < 60) n++;
            }
            return n;
        }""",
        [chart, list(rgb)],
    )


def test_the_status_page_in_chromium(
    broker: Any, echoing: EchoingReceiver, unique_topic, tmp_path, deployments, page: Page
) -> None:
    secret_value = f"tok-{uuid.uuid4().hex}"
    topic = unique_topic("page")
    echoing.respond("/hooks/page-failing", *[Reply(400)] * 5)
    herald_ = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[
            hook("page-ok", topic, "$.kind == 'ok'"),
            hook("page-failing", topic, "$.kind == 'fail'"),
        ],
        targets=[
            webhook_target(echoing.url, headers={"Authorization": "Bearer ${env:PAGE_TOKEN}"})
        ],
        source_partitions=1,
        settings={"admin": {"keyId": ADMIN_KEY, "keySecret": ADMIN_SECRET}},
    )
    worker = herald_.worker()
    worker.env["PAGE_TOKEN"] = secret_value
    herald_.start_worker(worker)
    # Offset 0 of the only partition: refused with a 400 that echoes the credential.
    assert produce(broker.bootstrap, topic, [{"key": "f", "value": {"kind": "fail", "n": 0}}]) == [
        (0, 0)
    ]

    # The page asks for a key, and keeps the token in the tab.
    page.goto(f"{worker.web_url}/status?interval=1000")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#key-id", ADMIN_KEY)
    page.fill("#key-secret", ADMIN_SECRET)
    page.click("#login button[type=submit]")
    expect(page.locator("#main")).to_be_visible()
    expect(page.locator("#user")).to_contain_text("herald-admin")
    assert page.evaluate("sessionStorage.getItem('herald.token')")
    expect(page.locator("#key-secret")).to_have_value("")

    # The integration and the handlers, with their counts.
    expect(cell(page, "integrations", "integration='local'", "state")).to_have_text("consuming")
    expect(page.locator("#handlers tr[data-handler]")).to_have_count(2)

    # The dead letter: counted for the integration, listed with its reason, masked.
    failures = page.locator("#failures tr[data-failure]", has_text="page-failing")
    expect(failures.first).to_contain_text("HTTP 400", timeout=WAIT_MS)
    expect(failures.first).to_contain_text("DEAD_LETTERED")
    expect(failures.first).to_contain_text("Authorization: ***")
    expect(cell(page, "integrations", "integration='local'", "deadLetters")).to_have_text("1")
    expect(cell(page, "handlers", "handler='page-failing'", "deadLettered")).to_have_text("1")

    # While records flow, page-ok's rates move, and the rates chart draws them.
    stop = threading.Event()
    producer = produce_while(broker.bootstrap, topic, stop)
    try:
        positive(page, "#handlers tr[data-handler='page-ok'] [data-field='matchedRate']")
        positive(page, "#handlers tr[data-handler='page-ok'] [data-field='deliveredRate']")
        page.wait_for_function(
            "() => document.querySelectorAll('#rates-chart canvas').length > 0", timeout=WAIT_MS
        )
        wait_until(
            lambda: sum(stroke_pixels(page, "#rates-chart", rgb) for rgb in FLOWING_RGB) > 200,
            WAIT_MS / 1000,
            "the matched and delivered series drawn on the rates chart",
        )
        # More points on the charts, for the screenshot.
        delivered = cell(page, "handlers", "handler='page-ok'", "delivered")
        wait_until(lambda: int(delivered.inner_text()) >= 150, 60, "150 deliveries shown")
    finally:
        stop.set()
        producer.join(timeout=30)

    # The dead-lettered record's history, by topic, partition and offset.
    page.fill("#find-topic", topic)
    page.fill("#find-partition", "0")
    page.fill("#find-offset", "0")
    page.click("#find-form button[type=submit]")
    found = page.locator("#find-result [data-handler='page-failing']")
    expect(found).to_contain_text("DEAD_LETTERED", timeout=WAIT_MS)
    expect(found).to_contain_text("dead letter (delivery)")
    expect(found).to_contain_text("HTTP 400")
    expect(page.locator("#find-result h3")).to_have_text(f"local/{topic}/0/0")
    expect(page.locator("#find-result [data-handler='page-ok']")).to_contain_text(
        "no record: condition false"
    )

    # A dry run of page-ok: the condition's result and the exact request, credential masked.
    page.select_option("#try-handler", "page-ok")
    page.fill("#try-message", '{"kind": "ok", "n": 7}')
    page.fill("#try-key", "order-7")
    page.click("#try-form button[type=submit]")
    result = page.locator("#try-result [data-handler='page-ok']")
    expect(result.locator("[data-field='condition']")).to_have_text(
        "condition true", timeout=WAIT_MS
    )
    request = result.locator("[data-field='request']").first
    expect(request).to_contain_text(f"POST {echoing.url}/hooks/page-ok")
    expect(request.locator("table.headers tr", has_text="Authorization")).to_contain_text("***")
    expect(request.locator("pre")).to_contain_text('"n": 7')

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    print(f"status page screenshot: {SCREENSHOT}")

    # The summary the page reads shows an application only the handlers it may READ, in
    # the shape the OpenAPI document gives.
    admin = token_for(worker, ADMIN_KEY, ADMIN_SECRET)
    status, application = raw(worker, "POST", "/api/applications", {"name": "sre"}, admin)
    assert status == 200, application
    path = f"/api/applications/{application['id']}/accessKeys"
    status, key = raw(worker, "POST", path, None, admin)
    assert status == 200, key
    grant = {
        "subject": {"type": "USER", "id": f"app:{application['id']}"},
        "target": {"type": "EVENT_HANDLER", "id": "page-ok"},
        "access": ["READ"],
    }
    assert raw(worker, "POST", "/api/auth/authorization", grant, admin)[0] == 200
    reader = token_for(worker, key["id"], key["secret"])
    summary = get(worker, "/api/herald/status", reader)
    assert [h["name"] for h in summary["handlers"]] == ["page-ok"]
    assert [i["name"] for i in summary["integrations"]] == ["local"]
    everything = get(worker, "/api/herald/status", admin)
    assert [h["name"] for h in everything["handlers"]] == ["page-failing", "page-ok"]
    assert raw(worker, "GET", "/api/herald/status")[0] == 401

    # No secret anywhere on the page, and not one console error.
    shown = page.content()
    for secret in (secret_value, ADMIN_SECRET):
        assert secret not in shown
    assert page.errors == []  # type: ignore[attr-defined]
