"""An account that went to error, mended in a real browser: the example page offers
Reconnect, which opens StackOne's real Hub in re-connect mode (`account-id`) for that
account; new credentials bring it back to active, and the page learns it from the event
stream, whose event carries the status before it.

Debian's Chromium through Playwright, as tests/system/test_hub_browser.py (whose fixtures, in
tests/harness/browsers.py, this module shares); each step is screenshotted under the test's tmp_path
(`screenshots/NN-step.png`). This is the README's "An account went to error" walk-through.
"""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import expect

from service.runtime import Runtime
from tests.harness import browsers
from tests.harness.browsers import Browser, emulator_state, link_bamboohr

pytestmark = [pytest.mark.asyncio, pytest.mark.browser]
# The same page, service and browser as the Hub's own browser tests; screenshots of the
# whole page (`full_page`): the events are below the fold.
example_url = browsers.example_url
browser = browsers.browser


async def test_an_account_in_error_is_reconnected_through_the_hub_and_shown_active_again(
    service: Runtime, example_url: str, browser: Browser
) -> None:
    """Link, break (emulator), Reconnect, the Hub for that account, credentials: active
    again on the page and on the stream, the event saying `error -> active`."""
    page = browser.page
    account = await link_bamboohr(browser, example_url, "bamboo-key-1")
    await expect(account).to_have_attribute("data-status", "active")
    account_id = str(await account.get_attribute("data-account-id"))
    await browser.shot("linked", full_page=True)

    # StackOne finds the credentials refused: the account goes to error (account.updated).
    assert service.emulator is not None
    async with httpx.AsyncClient(base_url=service.emulator.base_url) as emulator:
        broken = await emulator.post(f"/emulator/accounts/{account_id}/break", json={})
    assert broken.status_code == 200, broken.text
    listed = page.locator(f'#accounts li[data-account-id="{account_id}"]')
    await expect(listed).to_have_attribute("data-status", "error")
    broke = page.locator(f'#events li[data-account-id="{account_id}"][data-type="account.updated"]')
    await expect(broke).to_have_attribute("data-status", "active -> error")
    await browser.shot("broken", full_page=True)

    await listed.get_by_role("button", name="Reconnect").click()
    hub = page.locator("stackone-hub")
    await expect(hub).to_have_attribute("account-id", account_id)
    await expect(hub.get_by_label("API Key")).to_be_visible()
    await browser.shot("hub-reconnect-mode", full_page=True)
    await hub.get_by_label("API Key").fill("bamboo-key-2")
    await browser.shot("new-credentials", full_page=True)
    await hub.get_by_role("button", name="Connect").click()

    recovered = page.locator("#recovery")
    await expect(recovered).to_have_attribute("data-change", "error -> active")
    await expect(recovered).to_have_attribute("data-account-id", account_id)
    await expect(listed).to_have_attribute("data-status", "active")
    await expect(listed.get_by_role("button", name="Reconnect")).to_have_count(0)
    mended = page.locator(f'#events li[data-account-id="{account_id}"]').last
    await expect(mended).to_have_attribute("data-status", "error -> active")
    await browser.shot("active-again", full_page=True)
    state = emulator_state(service)
    assert list(state.accounts) == [account_id]  # re-opened, not another account
    assert state.accounts[account_id].status == "active"
    assert browser.outside == []
