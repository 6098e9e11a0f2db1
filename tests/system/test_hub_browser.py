"""The whole linking flow in a real browser: Debian's Chromium (driven by Playwright) opens
the example app (examples/web), whose page renders StackOne's real `<stackone-hub>`
against the bundled emulator, and the service behind it verifies and streams.

Every step is screenshotted under the test's tmp_path (`screenshots/NN-step.png`). No
request may leave loopback: each one elsewhere is refused and fails the test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import Locator, Page, expect

from service.emulator.accounts import new_account
from service.emulator.bodies import AccountSpec
from service.runtime import Runtime
from tests.harness import browsers
from tests.harness.browsers import (
    Browser,
    choose_bamboohr,
    emulator_state,
    link_bamboohr,
    open_page,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.browser]
example_url = browsers.example_url
browser = browsers.browser


async def create_auth_link(browser: Browser, url: str) -> Locator:
    """Opens the page and creates an Auth Link; returns the link once it is shown."""
    await open_page(browser, url)
    await browser.page.get_by_role("button", name="Create an Auth Link").click()
    link = browser.page.locator("#auth-link")
    await expect(link).to_be_visible()
    return link


async def follow(link: Locator) -> Page:
    """Clicks the Auth Link; returns the hosted page it opens."""
    async with link.page.context.expect_page() as opening:
        await link.click()
    return await opening.value


async def shows_the_account_active(browser: Browser, *, learned_from: str, step: str) -> None:
    """The example page shows the account active, learned from `learned_from`; a screenshot
    of it is `step`, and no request of the whole test left loopback."""
    account = browser.page.locator("#account")
    await expect(account).to_have_attribute("data-status", "active")
    await expect(account).to_have_attribute("data-learned-from", learned_from)
    await browser.page.bring_to_front()
    await browser.shot(step)
    assert browser.outside == []


async def test_the_hub_links_bamboohr_and_the_page_shows_it_verified_and_its_event(
    service: Runtime, example_url: str, browser: Browser
) -> None:
    """Pick, fill, connect: the Hub's success event carries the new account, the page
    shows it verified active, and its account.created event arrives on the page."""
    page = browser.page
    await open_page(browser, example_url)
    await choose_bamboohr(browser, "bamboo-key-1")
    await page.evaluate(
        """() => { window.hubSuccess = new Promise((resolve) => document
             .querySelector('stackone-hub')
             .addEventListener('success', (event) => resolve(event.detail), {once: true})); }"""
    )
    await page.locator("stackone-hub").get_by_role("button", name="Connect").click()
    success = await page.evaluate("() => window.hubSuccess")
    await expect(page.get_by_text("Connection Successful")).to_be_visible()
    account = page.locator("#account")
    await expect(account).to_have_attribute("data-status", "active")
    await expect(account).to_have_attribute("data-learned-from", "success")
    await expect(account).to_contain_text(success["id"])
    await browser.shot("verified")
    event = page.locator(f'#events li[data-account-id="{success["id"]}"]')
    await expect(event).to_have_attribute("data-type", "account.created")
    await expect(event).to_contain_text("verified")
    await browser.shot("event")
    linked = emulator_state(service).accounts[success["id"]]
    assert (success["provider"], linked.origin_owner_id) == ("bamboohr", "acme")
    assert browser.outside == []


async def test_an_auth_link_opened_and_completed_shows_the_account_and_its_event(
    service: Runtime, example_url: str, browser: Browser
) -> None:
    """Create an Auth Link, open it, link: the page learns of the account from its event
    (an Auth Link has no success callback) and shows it verified."""
    page = browser.page
    link = await create_auth_link(browser, example_url)
    await browser.shot("auth-link")
    hosted = await follow(link)
    await expect(hosted.get_by_role("button", name="Link")).to_be_visible()
    await browser.shot("hosted-page", hosted)
    await hosted.get_by_role("button", name="Link").click()
    await expect(hosted.get_by_text("Linked account")).to_be_visible()
    await browser.shot("hosted-linked", hosted)
    event = page.locator('#events li[data-type="account.created"]')
    await expect(event).to_be_visible()
    account_id = await event.get_attribute("data-account-id")
    assert account_id in emulator_state(service).accounts
    await expect(page.locator("#account")).to_contain_text(str(account_id))
    await shows_the_account_active(browser, learned_from="event", step="event-and-account")


async def test_an_auth_link_that_reopens_an_account_shows_it_and_lasts_five_days(
    service: Runtime, example_url: str, browser: Browser
) -> None:
    """The customer already has BambooHR and follows an Auth Link for it: StackOne re-opens
    that account (`account.updated`, not `.created`), and the page shows it all the same;
    the link lasts the 5 days an e-mail needs."""
    state = emulator_state(service)
    state.config.deliver_webhooks = False  # linked before: no event of it on this page
    existing = new_account(
        state, AccountSpec(provider="bamboohr", origin_owner_id="acme", origin_owner_name="Acme")
    )
    state.config.deliver_webhooks = True
    page = browser.page
    link = await create_auth_link(browser, example_url)
    token = parse_qs(urlsplit(str(await link.get_attribute("href"))).query)["token"][0]
    lasts = state.sessions[token].expires_at - datetime.now(UTC)
    assert lasts > timedelta(days=5) - timedelta(minutes=5), lasts
    hosted = await follow(link)
    await hosted.get_by_role("button", name="Link").click()
    await expect(hosted.get_by_text(f"Linked account {existing.id}")).to_be_visible()
    event = page.locator(f'#events li[data-account-id="{existing.id}"]')
    await expect(event).to_have_attribute("data-type", "account.updated")
    await shows_the_account_active(browser, learned_from="relinked", step="relinked")


async def test_refused_credentials_show_the_hubs_error_and_link_nothing(
    service: Runtime, example_url: str, browser: Browser
) -> None:
    """With the API key empty the Hub keeps Connect disabled; a blank one reaches the
    emulated provider, which refuses it: the Hub shows its error state, nothing is linked."""
    page = browser.page
    await open_page(browser, example_url)
    await choose_bamboohr(browser, "")
    connect = page.locator("stackone-hub").get_by_role("button", name="Connect")
    await expect(connect).to_be_disabled()
    await page.locator("stackone-hub").get_by_label("API Key").fill("   ")
    await connect.click()
    hub = page.locator("stackone-hub")
    await expect(hub.get_by_text("BambooHR refused the credentials")).to_be_visible()
    await hub.get_by_role("button", name="Expand").click()  # the provider's answer
    await expect(hub).to_contain_text("Invalid API key")
    await browser.shot("refused")
    assert emulator_state(service).accounts == {}
    assert await page.locator("#account").get_attribute("data-state") == "none"
    assert browser.outside == []


async def test_an_account_linked_in_error_is_shown_with_its_reason_explained(
    service: Runtime, example_url: str, browser: Browser
) -> None:
    """A key lacking a permission links an account StackOne reports in error: the page
    shows the status, what it means and the reason."""
    account = await link_bamboohr(browser, example_url, "limited-key")
    await expect(account).to_have_attribute("data-status", "error")
    await expect(account).to_contain_text("insufficient_permissions")
    await expect(account).to_contain_text("lack a permission at the provider")
    await browser.shot("error-explained")
    assert browser.outside == []
