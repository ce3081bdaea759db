"""The Contacts page in Debian's Chromium (set up as in test_browser.py): a marketer uploads a
CSV, watches the import finish, reads the bad row, then finds an imported contact."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from config.settings import Settings
from hub import users
from hub.context import Hub
from hub.users import Role
from tests import test_browser
from tests.conftest import Tenant
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, PASSWORD, screenshots, sign_in

pytestmark = test_browser.pytestmark
CSV = (b"phone,email,first name,tags\n"
       b"+12125550001,ada@example.com,Ada,vip\n"
       b"+12125550002,,Bob,\n"
       b"12,carol@example.com,Carol,\n")


async def test_marketer_imports_a_csv_sees_the_bad_row_and_finds_a_contact(
    hub: Hub, tenant: Tenant, gateway_url: str, settings: Settings, tmp_path: Path
) -> None:
    await users.do_create_user(hub, uuid.UUID(tenant.agency_id), "marketer@c.example",
                               PASSWORD, "Marketer", {uuid.UUID(tenant.sa1): Role.MARKETER})
    source = tmp_path / "people.csv"
    source.write_bytes(CSV)
    shots = Path(os.environ.get("HUB_SCREENSHOT_DIR") or settings.data_dir / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any I/O
    async with test_browser.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await sign_in(browser, gateway_url, "marketer@c.example")
            await page.get_by_role("link", name="Contacts").click()
            await test_browser.expect(page.get_by_test_id("no-contacts")).to_be_visible()
            await page.get_by_label("CSV file", exact=True).set_input_files(str(source))
            await page.get_by_role("button", name="Import").click()
            await test_browser.expect(page.get_by_test_id("import-status")).to_have_text(
                "Done", timeout=60_000)
            await test_browser.expect(page.get_by_test_id("import-counts")).to_have_text(
                "3 rows: 2 created, 0 updated, 1 not imported.")
            await test_browser.expect(page.get_by_test_id("import-error")).to_contain_text(
                "phone")
            await page.get_by_role("link", name="Refresh the contact list").click()
            await test_browser.expect(page.get_by_test_id("contact")).to_have_count(2)
            await screenshots(page, shots, "contacts")
            await page.get_by_label("Name, phone or email").fill("ada")
            await page.get_by_role("button", name="Search").click()
            await test_browser.expect(page.get_by_test_id("contact")).to_have_count(1)
            await page.get_by_role("link", name="Ada").click()
            await test_browser.expect(page.get_by_test_id("contact-name")).to_have_text("Ada")
            await test_browser.expect(page.get_by_test_id("subscription-sms")).to_contain_text(
                "subscribed")
            await screenshots(page, shots, "contact")
        finally:
            await browser.close()
