"""URLs derived from the settings, as a client on the same machine uses them."""

from __future__ import annotations

import pytest

from outbox.settings import Settings


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8090/"),
        ("0.0.0.0", "http://127.0.0.1:8090/"),
        ("::", "http://127.0.0.1:8090/"),
        ("[::]", "http://127.0.0.1:8090/"),
        ("", "http://127.0.0.1:8090/"),
        ("::1", "http://[::1]:8090/"),
        ("monitor.internal", "http://monitor.internal:8090/"),
    ],
)
def test_the_monitor_url_asks_an_any_address_over_loopback(host: str, url: str) -> None:
    settings = Settings(
        database_url="postgresql://postgres@127.0.0.1/x",  # type: ignore[arg-type]
        monitor_host=host,
    )
    assert settings.monitor_url() == url
