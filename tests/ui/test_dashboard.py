"""The dashboard in a real browser (Debian's Chromium, headless) against a live server."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.cli.policies import traced_policy
from tests.conftest import LiveServer
from tests.ui.conftest import SCREENSHOTS, Watched, api_login, log_in

MARKUP_NAME = "<img src=x onerror=alert(1)>"


def _session_id(url: str) -> str:
    m = re.search(r"#/sessions/([0-9a-f]{32})$", url)
    assert m, url
    return m.group(1)


def test_whole_flow_login_upload_optimize_chat_plot_download(
    ui: Watched, server: LiveServer, tmp_path: Path
) -> None:
    page = ui.page
    response = page.goto("/ui/")
    assert response is not None and response.ok
    csp = response.headers["content-security-policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp

    log_in(ui)
    page.get_by_role("heading", name="Models", exact=True).wait_for()
    # The token lives in sessionStorage (gone with the tab), never in localStorage.
    assert page.evaluate("() => sessionStorage.getItem('robopt.token')")
    assert page.evaluate("() => localStorage.length") == 0

    # Upload with a progress bar.
    page.get_by_label("Model file").set_input_files(str(traced_policy(tmp_path / "walker.pt")))
    page.get_by_label("Name", exact=True).fill("walker policy")
    page.get_by_role("button", name="Upload").click()
    page.get_by_role("status").filter(has_text="Uploaded “walker policy”").wait_for()
    assert page.get_by_label("Upload progress").evaluate("el => el.value") == 100
    ui.shot("models")

    # Inspect: profile and input signature.
    page.get_by_role("link", name="walker policy").click()
    page.get_by_role("heading", name="Input signature").wait_for()
    signature = page.get_by_role("table").filter(has_text="obs")
    assert "[dynamic, 32]" in signature.inner_text() and "float32" in signature.inner_text()
    assert "283,656" in page.get_by_role("region", name="Profile").inner_text()

    # Start from a plain-words goal (budget fields so the run stays short but long enough to chat).
    page.get_by_label("Goal").fill("as small as possible, keep 90% of the accuracy")
    page.get_by_text("More: techniques, floors, budget").click()
    page.get_by_label("Max trials").fill("4")
    page.get_by_label("Benchmark iterations").fill("10000")
    page.get_by_role("button", name="Start optimization").click()
    page.wait_for_url(re.compile(r".*#/sessions/[0-9a-f]{32}$"))
    session_id = _session_id(page.url)

    # Live: events show up while the session is still running (the stream is open, not replayed).
    timeline = page.get_by_role("list", name="Agent timeline")
    page.wait_for_function(
        """() => document.querySelector('.connection').dataset.state === 'live'
                 && document.querySelector('.session-head .badge').textContent === 'running'
                 && document.querySelectorAll('.timeline .ev').length >= 2"""
    )

    # Steer by chat while it runs; the agent answers at its next step.
    page.get_by_label("Message").fill("go to 4-bit weights")
    page.get_by_role("button", name="Send").click()
    chat = page.get_by_role("list", name="Conversation")
    chat.get_by_text("go to 4-bit weights").wait_for()
    chat.locator(".chat-assistant").filter(has_text="I will prefer 4-bit methods").wait_for(timeout=60_000)

    timeline.get_by_text("Ended: completed").wait_for(timeout=90_000)
    for kind in ("Thought", "Tool call", "Measured", "Accepted"):
        assert timeline.get_by_text(kind).count() >= 1, kind

    # The Pareto plot: an image named "Pareto plot", with the original and the candidates.
    plot = page.get_by_role("img", name="Pareto plot")
    plot.wait_for()
    assert plot.locator(".point").count() >= 2
    assert plot.locator(".point-baseline").count() == 1
    assert plot.locator(".selected-ring").count() >= 1
    results = httpx.get(
        f"{server.base_url}/sessions/{session_id}/results", headers=api_login(server.base_url)
    )
    body = results.json()
    selected = body["selected_version"]
    assert page.locator(".selected-label").first.text_content() == f"{selected['version']} selected"
    rejected = [t for t in body["trials"] if t["status"] == "rejected"]
    assert plot.locator(".layer-rejected .point-rejected").count() == len(rejected)
    trial_rows = page.locator("table.trials tbody tr")
    assert trial_rows.count() == len(body["trials"])

    # Results: gains, recipe, download of the selected version.
    gains = page.get_by_role("table", name="Gains of the selected version over the original")
    assert "smaller" in gains.inner_text()
    assert page.locator(".recipe li").count() == len(body["recipe"])
    page.mouse.move(0, 0)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ui.shot("session-page")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download").click()
    download = info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    meta = httpx.get(
        f"{server.base_url}/models/{selected['model_id']}", headers=api_login(server.base_url)
    ).json()
    assert saved.stat().st_size == meta["size_bytes"] and saved.suffix == meta["extension"]

    # Cancel is over for a finished session; Roll back goes to the previous accepted version and the
    # stream, reopened from where it stopped, brings the rollback's events.
    assert page.get_by_role("button", name="Cancel").is_disabled()
    chain = body["accepted_chain"]
    assert len(chain) >= 2 and chain[-1] == selected["version"], chain
    previous = chain[-2]  # the original when one candidate was accepted
    page.get_by_role("button", name="Roll back").click()
    page.get_by_role("status").filter(has_text=f"Rolled back to {previous}").wait_for()
    timeline.get_by_text("Rolled back", exact=True).wait_for()
    assert page.locator(".selected-label").first.text_content() == f"{previous} selected"
    assert not ui.errors and not ui.dialogs, (ui.errors, ui.dialogs)


def test_the_stream_reconnects_with_last_event_id(ui: Watched, server: LiveServer, tmp_path: Path) -> None:
    headers = api_login(server.base_url)
    with open(traced_policy(tmp_path / "p.pt", seed=1), "rb") as f:
        model = httpx.post(
            f"{server.base_url}/models/upload",
            headers=headers,
            files={"file": ("p.pt", f)},
            data={"name": "reconnect"},
            timeout=60,
        ).json()
    started = httpx.post(
        f"{server.base_url}/optimize",
        headers=headers,
        json={"model_id": model["model_id"], "max_trials": 2, "benchmark_iterations": 5},
        timeout=30,
    ).json()
    session_id = started["session_id"]
    with httpx.stream(
        "GET", f"{server.base_url}/sessions/{session_id}/events", headers=headers, timeout=60
    ) as r:
        raw = "".join(r.iter_text())
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.startswith("id:") or "\nid:" in b]
    total = len(blocks)
    assert total > 6
    cut = 4

    # The first connection delivers four events and drops; the client must ask for the rest.
    seen: list[str | None] = []

    def events_route(route) -> None:  # type: ignore[no-untyped-def]
        seen.append(route.request.headers.get("last-event-id"))
        if len(seen) == 1:
            route.fulfill(
                status=200,
                headers={"Content-Type": "text/event-stream"},
                body="\n\n".join(blocks[:cut]) + "\n\n",
            )
        else:
            route.continue_()

    page = ui.page
    page.route(re.compile(r".*/sessions/[0-9a-f]+/events$"), events_route)
    log_in(ui)
    page.get_by_role("heading", name="Models", exact=True).wait_for()
    page.goto(f"/ui/#/sessions/{session_id}")
    timeline = page.get_by_role("list", name="Agent timeline")
    timeline.get_by_text("Ended: completed").wait_for()
    assert seen[:2] == [None, str(cut)]
    seqs = page.locator(".timeline .ev").evaluate_all("els => els.map(e => Number(e.dataset.seq))")
    assert seqs == sorted(set(seqs)), seqs  # every event once, in order
    assert max(seqs) == total
    ui.shot("reconnected-session")
    assert not ui.errors, ui.errors


def test_markup_in_a_model_name_is_shown_as_text(ui: Watched, server: LiveServer, tmp_path: Path) -> None:
    headers = api_login(server.base_url)
    with open(traced_policy(tmp_path / "x.pt", seed=2), "rb") as f:
        r = httpx.post(
            f"{server.base_url}/models/upload",
            headers=headers,
            files={"file": ("x.pt", f)},
            data={"name": MARKUP_NAME, "description": "<script>alert(2)</script><b>bold?</b>"},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    model_id = r.json()["model_id"]

    page = ui.page
    log_in(ui)
    row = page.locator(f'tr[data-model-id="{model_id}"]')
    row.wait_for()
    assert row.get_by_role("link", name=MARKUP_NAME).is_visible()  # the literal text
    assert page.locator("img").count() == 0 and page.locator("main script, main b").count() == 0
    page.get_by_role("link", name=MARKUP_NAME).click()
    page.get_by_role("heading", name=MARKUP_NAME).wait_for()
    page.get_by_text("<script>alert(2)</script><b>bold?</b>").wait_for()
    assert page.locator("main img, main script, main b").count() == 0

    # Even markup that did reach the DOM could not run: the policy refuses inline script.
    violated = page.evaluate(
        """() => new Promise((resolve) => {
             document.addEventListener('securitypolicyviolation', (e) => resolve(e.effectiveDirective));
             const s = document.createElement('script');
             s.textContent = 'window.__ran = true';
             document.body.append(s);
             setTimeout(() => resolve(null), 2000);
           })"""
    )
    assert violated == "script-src-elem" and page.evaluate("() => window.__ran") is None
    ui.shot("markup-name")

    # Delete it from the list (two steps, no browser dialog).
    page.get_by_role("link", name="← All models").click()
    row.get_by_role("button", name="Delete").click()
    row.get_by_role("button", name="Confirm delete").click()
    page.get_by_role("status").filter(has_text="Deleted").wait_for()
    row.wait_for(state="detached")
    assert ui.dialogs == [], ui.dialogs
    assert ui.errors == [e for e in ui.errors if "script-src" in e]  # only the violation provoked above


def test_a_wrong_password_is_shown_as_an_error(ui: Watched) -> None:
    log_in(ui, password="not-the-password")
    alert = ui.page.get_by_role("alert")
    alert.wait_for()
    assert "Incorrect username or password" in alert.inner_text()
    assert ui.page.get_by_role("button", name="Log in").is_visible()
    assert ui.page.evaluate("() => sessionStorage.getItem('robopt.token')") is None
    ui.shot("wrong-password")


def test_refusals_are_shown_and_a_revoked_token_asks_for_a_new_login(
    ui: Watched, server: LiveServer, tmp_path: Path
) -> None:
    page = ui.page
    log_in(ui)
    page.get_by_role("heading", name="Models", exact=True).wait_for()

    # A file the server refuses: its message, no progress bar left, nothing listed.
    bogus = tmp_path / "notes.exe"
    bogus.write_bytes(b"MZ not a model")
    page.get_by_label("Model file").set_input_files(str(bogus))
    page.get_by_role("button", name="Upload").click()
    alert = page.get_by_role("alert").filter(has_text="not accepted")
    alert.wait_for()
    assert ".exe" in alert.inner_text()
    assert page.get_by_label("Upload progress").is_hidden()
    assert page.get_by_role("link", name="notes").count() == 0

    # Criteria the server refuses: the reason, and the page stays where it is.
    page.get_by_label("Model file").set_input_files(str(traced_policy(tmp_path / "strict.pt", seed=4)))
    page.get_by_label("Name", exact=True).fill("strict")
    page.get_by_role("button", name="Upload").click()
    page.get_by_role("link", name="strict").click()
    page.get_by_label("Preset").select_option("accuracy_first")
    page.get_by_text("More: techniques, floors, budget").click()
    page.get_by_label("Accuracy floor (%)").fill("80")
    page.get_by_role("button", name="Start optimization").click()
    refused = page.get_by_role("alert").filter(has_text="contradicts")
    refused.wait_for()
    assert "#/models/" in page.url
    ui.shot("refused-start")

    # The token is revoked elsewhere (a logout): the next call sends the user to the login form.
    token = page.evaluate("() => sessionStorage.getItem('robopt.token')")
    r = httpx.post(f"{server.base_url}/auth/logout", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    page.get_by_role("link", name="Sessions").click()
    page.get_by_role("status").filter(has_text="expired or was revoked").wait_for()
    assert page.get_by_role("button", name="Log in").is_visible()
    assert page.evaluate("() => sessionStorage.getItem('robopt.token')") is None
    assert not ui.errors and not ui.dialogs, (ui.errors, ui.dialogs)
