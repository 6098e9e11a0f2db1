"""The example app's page in Debian's Chromium (Playwright): the page, the service behind
it, and the steps that link an account (shared by the browser tests)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest_asyncio
from aiohttp import web
from playwright.async_api import Locator, Page, Route, async_playwright, expect

from examples.web.app import HUB_SCRIPT, Config, build_app
from service.emulator import EMULATOR_STATE, EmulatorState
from service.runtime import Runtime

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STEP_TIMEOUT_MS = 10_000


@dataclass
class Browser:
    """A page in Chromium, what it tried to reach off loopback, and its screenshots."""

    page: Page
    screenshots: Path
    outside: list[str] = field(default_factory=list)

    async def shot(self, step: str, page: Page | None = None, full_page: bool = False) -> None:
        """Saves a screenshot of the step, numbered in order (`full_page`: below the fold
        too)."""
        number = len(list(self.screenshots.iterdir())) + 1
        path = self.screenshots / f"{number:02d}-{step}.png"
        await (page or self.page).screenshot(path=path, full_page=full_page)

    async def keep_on_loopback(self, route: Route) -> None:
        """Lets loopback requests through; refuses and records any other."""
        if urlsplit(route.request.url).hostname in {"127.0.0.1", "localhost"}:
            await route.continue_()
        else:
            self.outside.append(route.request.url)
            await route.abort()


@pytest_asyncio.fixture
async def example_url(service: Runtime) -> AsyncIterator[str]:
    """The example app, on a free port, backed by the service and its emulator."""
    assert service.emulator is not None
    assert HUB_SCRIPT.exists(), "the Hub is not installed: run `make install`"
    config = Config(grpc_target=service.grpc_target, hub_base_url=service.emulator.base_url)
    runner = web.AppRunner(build_app(config), handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/"
    await runner.cleanup()


@pytest_asyncio.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    """A fresh Chromium page (Debian's, installed by `make install`)."""
    assert shutil.which(CHROMIUM), "Chromium is not installed: run `make install`"
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM)
        context = await chromium.new_context(viewport={"width": 1200, "height": 720})
        context.set_default_timeout(STEP_TIMEOUT_MS)
        opened = Browser(await context.new_page(), screenshots)
        await context.route("**/*", opened.keep_on_loopback)
        yield opened
        await chromium.close()


def emulator_state(service: Runtime) -> EmulatorState:
    """The emulator's accounts and deliveries, read in-process."""
    assert service.emulator is not None
    return service.emulator.runner.app[EMULATOR_STATE]


async def open_page(browser: Browser, url: str) -> None:
    """Opens the page and waits until its event stream is attached."""
    await browser.page.goto(url)
    await expect(browser.page.locator("#events-state")).to_have_attribute("data-state", "live")


async def choose_bamboohr(browser: Browser, api_key: str) -> None:
    """Picks BambooHR in the Hub's list and fills its form."""
    hub = browser.page.locator("stackone-hub")
    await expect(hub.get_by_text("BambooHR")).to_be_visible()
    await browser.shot("providers")
    await hub.get_by_text("BambooHR").click()
    await hub.get_by_label("Subdomain").fill("acme")
    await hub.get_by_label("API Key").fill(api_key)
    await browser.shot("form")


async def link_bamboohr(browser: Browser, url: str, api_key: str) -> Locator:
    """Opens the page and links BambooHR in the Hub with `api_key`; returns the page's
    account."""
    await open_page(browser, url)
    await choose_bamboohr(browser, api_key)
    await browser.page.locator("stackone-hub").get_by_role("button", name="Connect").click()
    return browser.page.locator("#account")
