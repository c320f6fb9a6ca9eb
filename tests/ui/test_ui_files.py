"""The dashboard's files as the app serves them (in-process; no browser needed)."""

from __future__ import annotations

import httpx

from api.routers.ui import UI_DIR


async def test_pages_and_modules_come_with_a_strict_policy(client: httpx.AsyncClient) -> None:
    r = await client.get("/ui/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-request-id"]  # the API's own middleware still runs

    js = await client.get("/ui/js/main.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert js.headers["content-security-policy"] == csp
    css = await client.get("/ui/app.css")
    assert css.headers["content-type"].startswith("text/css")

    for path in ("/ui", "/"):
        moved = await client.get(path)
        assert moved.status_code == 307 and moved.headers["location"] == "/ui/"


async def test_only_ui_files_are_served(client: httpx.AsyncClient) -> None:
    for path in ("/ui/../main.py", "/ui/%2e%2e/main.py", "/ui/..%2Fmain.py", "/ui/js/nope.js", "/ui/js"):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"] == "not_found"


async def test_no_inline_script_or_style_in_the_pages() -> None:
    # What the policy would refuse must not be there to begin with (the pages would break).
    html = (UI_DIR / "index.html").read_text()
    assert "<script>" not in html and "style=" not in html and "<style" not in html
    for module in UI_DIR.rglob("*.js"):
        text = module.read_text()
        for forbidden in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "localStorage.setItem",
        ):
            assert forbidden not in text, (module.name, forbidden)
