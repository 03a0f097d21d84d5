"""What every morning has in common: the screenshots for the docs, the dashboard's panels, and the
refusal a role meets outside its own screens."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from playwright.sync_api import Page, expect

# Written under var/ (not tracked) on every run; `make screenshots` copies them into docs/screenshots/.
SCREENSHOTS = Path(settings.VAR_DIR) / "screenshots"
VIEWPORT = {"width": 1440, "height": 1000}
# The dashboard's panels (templates/admin/index.html), by the name the tests use.
PANELS = ("dispatch-health", "funnel", "referrals-per-day", "consents", "reclaims", "revenue")


def screenshot(page: Page, role: str, step: str) -> Path:
    """The whole page, from the top, as ``<role>-<step>.png`` (the docs link to these names)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{role}-{step}.png"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)
    return path


def dashboard_shows(page: Page, panels: set[str]) -> None:
    """On the admin index: exactly these panels (the others absent), their charts drawn."""
    assert panels <= set(PANELS), panels - set(PANELS)
    expect(page.get_by_test_id("dashboard")).to_be_visible()
    for name in PANELS:
        panel = page.get_by_test_id(f"panel-{name}")
        if name in panels:
            expect(panel).to_be_visible()
        else:
            expect(panel).to_have_count(0)
    charts = page.locator("canvas[data-chart]")
    for index in range(charts.count()):
        expect(charts.nth(index)).to_have_attribute("data-ready", "true")


def refused(page: Page, url: str) -> None:
    """Opening ``url`` answers 403 with the refusal page, not a login form or an enrolment page."""
    response = page.goto(url)
    assert response is not None
    assert response.status == 403, (url, response.status)
    expect(page.locator("#access-denied")).to_be_visible()  # templates/403.html, in the admin's frame
    expect(page.locator("#login-form")).to_have_count(0)


def refused_post(page: Page, url: str, data: dict | None = None) -> None:
    """A POST the page offers no button for, sent with the session and a valid CSRF token: 403 from
    the permission check (never the CSRF failure page, which also answers 403)."""
    token = next(c["value"] for c in page.context.cookies() if c["name"] == settings.CSRF_COOKIE_NAME)
    response = page.request.post(
        url,
        form={"csrfmiddlewaretoken": token, **(data or {})},
        headers={"X-CSRFToken": token, "Referer": page.url},
        max_redirects=0,
    )
    assert response.status == 403, (url, response.status)
    assert "CSRF" not in response.text(), "refused by the CSRF check, not by the permission check"
