"""Where a webhook may go: https to public addresses only, unless ops allow otherwise."""

from __future__ import annotations

import pytest

from services.notifier.config import NotifierSettings
from services.notifier.domain import address_refusal, new_webhook_secret, webhook_url_refusal
from services.notifier.webhooks import DeliveryFailed, WebhookSender


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.5", "private"),
        ("10.255.255.255", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.20", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("0.0.0.0", "not a public"),
        ("100.64.0.1", "not a public"),
        ("224.0.0.1", "not a public"),
    ],
)
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    refusal = address_refusal(address)
    assert refusal is not None and why in refusal


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "172.32.0.1"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(address) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://ehr.example.org/hook", "https"),
        ("ftp://ehr.example.org/hook", "https"),
        ("https:///hook", "no host"),
        ("https://user:pw@ehr.example.org/hook", "credentials"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::1]:8443/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://192.168.0.10/hook", "private"),
        ("https://localhost/hook", "local host"),
        ("https://ehr.example.org:99999/hook", "port"),
    ],
)
def test_endpoint_urls_are_refused_at_registration(url: str, why: str) -> None:
    refusal = webhook_url_refusal(url, allow_http=False, allow_private=False)
    assert refusal is not None and why in refusal


def test_ops_settings_allow_http_and_private_addresses() -> None:
    assert webhook_url_refusal("https://ehr.example.org/hook", allow_http=False, allow_private=False) is None
    assert webhook_url_refusal("http://127.0.0.1:8080/h", allow_http=True, allow_private=True) is None
    refusal = webhook_url_refusal("http://127.0.0.1:8080/h", allow_http=True, allow_private=False)
    assert refusal is not None and "loopback" in refusal


async def test_every_resolved_address_is_checked_at_delivery_and_the_checked_one_is_used() -> None:
    """A name that resolves to a private address (DNS rebinding) is refused when delivering; a public
    one is connected to by the address that was checked, the name kept for Host and TLS."""
    answers = {"rebound.example.org": ["93.184.215.14", "10.0.0.7"], "ehr.example.org": ["93.184.215.14"]}

    async def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    sender = WebhookSender(NotifierSettings(), resolver=resolver)
    try:
        with pytest.raises(DeliveryFailed, match=r"10\.0\.0\.7 is a private address"):
            await sender.target("https://rebound.example.org/hook")
        with pytest.raises(DeliveryFailed, match=r"refused: http"):
            await sender.target("http://ehr.example.org/hook")
        url, host, sni = await sender.target("https://ehr.example.org:8443/hook?x=1")
        assert (str(url), host, sni) == (
            "https://93.184.215.14:8443/hook?x=1",
            "ehr.example.org:8443",
            "ehr.example.org",
        )
    finally:
        await sender.aclose()


def test_secrets_are_standard_webhooks_secrets_and_never_repeat() -> None:
    first, second = new_webhook_secret(), new_webhook_secret()
    assert first.startswith("whsec_") and len(first) == len("whsec_") + 44 and first != second
