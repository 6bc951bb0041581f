"""The browser fixtures drive the real login page in Debian's Chromium."""

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.conftest import PASSWORD, make_user
from tests.e2e.conftest import LOGIN_PATH, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_user_signs_in_through_the_login_page(signed_in_page, console_errors, request):
    alice = make_user("alice")

    page = signed_in_page(alice, PASSWORD)

    assert urlsplit(page.url).path != LOGIN_PATH
    expect(page.get_by_role("banner")).to_contain_text("alice")
    assert "sessionid" in {cookie["name"] for cookie in page.context.cookies()}
    assert console_errors == []
    shot = screenshot(page, request.node.name)
    assert shot.is_file()
    assert shot.stat().st_size > 0
