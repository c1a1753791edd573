"""The ACL SETUSER rules of a tenant's Redis user (outbox.streams.acl): what they allow is
proved against real Redis in tests/integration/test_tenant_acl.py; here, their shape."""

from __future__ import annotations

import hashlib
from fnmatch import fnmatchcase

import pytest

from outbox.envelope import MessagePriority
from outbox.errors import ConfigurationError, InvalidNameError
from outbox.streams.acl import NEVER_GRANTED, commands, key_rules, tenant_acl
from outbox.streams.keys import Keys

DOCUMENT = Keys("opsconductor")
TAGGED = Keys("opsconductor", tagged=True)


def _granted(rules: tuple[str, ...]) -> set[str]:
    return {rule[1:] for rule in rules if rule.startswith("+")}


def _writable(patterns: list[str], key: str) -> bool:
    # Redis globs match like fnmatchcase for these patterns (no brackets, no escapes).
    return any(fnmatchcase(key, p[1:]) for p in patterns if p.startswith("~"))


def _readable(patterns: list[str], key: str) -> bool:
    return _writable(patterns, key) or any(
        fnmatchcase(key, p[3:]) for p in patterns if p.startswith("%R~")
    )


def test_rules_reset_first_hash_the_password_and_grant_after_minus_all() -> None:
    acl = tenant_acl(DOCUMENT, "acme", "s3cret")
    assert acl.user == "opsconductor-tenant-acme"
    assert acl.rules[:3] == ("reset", "on", "#" + hashlib.sha256(b"s3cret").hexdigest())
    assert "s3cret" not in acl.render()
    assert not any(rule.startswith(">") for rule in acl.rules)
    assert acl.rules.index("-@all") < min(
        acl.rules.index(r) for r in acl.rules if r.startswith("+")
    )
    assert "resetkeys" in acl.rules
    assert "resetchannels" in acl.rules
    assert acl.render().startswith("ACL SETUSER opsconductor-tenant-acme reset on #")
    assert tenant_acl(DOCUMENT, "acme", "s3cret", user="acme-svc").user == "acme-svc"


def test_no_write_of_strings_no_delete_no_listing_no_admin() -> None:
    for cluster in (False, True):
        granted = _granted(tenant_acl(DOCUMENT, "acme", "pw", cluster=cluster).rules)
        assert not granted & NEVER_GRANTED
        assert not any(g.startswith("@") for g in granted)  # no category, only commands
        assert {g.split("|")[0] for g in granted}.isdisjoint({"acl", "config", "flushall"})


def test_cluster_adds_only_discovery_commands() -> None:
    single = {g.command for g in commands(cluster=False)}
    cluster = {g.command for g in commands(cluster=True)}
    assert cluster - single == {"cluster|slots", "cluster|shards", "command", "readonly", "asking"}
    assert all(g.why for g in commands(cluster=True))


@pytest.mark.parametrize("keys", [DOCUMENT, TAGGED], ids=["document", "tagged"])
def test_patterns_cover_the_tenants_keys_and_nothing_of_others(keys: Keys) -> None:
    patterns = key_rules(keys, "acme")
    acme, globex = keys.for_tenant("acme"), keys.for_tenant("globex")
    for priority in MessagePriority:
        assert _writable(patterns, acme.stream("assets", priority))
        assert not _readable(patterns, globex.stream("assets", priority))
        assert not _readable(patterns, keys.stream("assets", priority))
    assert _writable(patterns, acme.dead_letter)
    assert _writable(patterns, acme.consumers)
    for other in (globex.dead_letter, globex.consumers, keys.dead_letter, keys.consumers):
        assert not _readable(patterns, other)
    # A tenant whose id starts like acme's is another tenant.
    assert not _readable(patterns, keys.for_tenant("acme2").stream("assets"))
    # The relay's watermarks are never writable (tagged: readable, inside the prefix).
    stream = acme.stream("assets")
    for mark in (keys.watermark(stream), keys.copy_watermark(stream, "billing")):
        assert not _writable(patterns, mark)


def test_bad_tenant_and_user_names_are_refused() -> None:
    with pytest.raises(InvalidNameError):
        tenant_acl(DOCUMENT, "Acme:*", "pw")
    with pytest.raises(InvalidNameError):
        tenant_acl(DOCUMENT, "events", "pw")
    for user in ("default", "two words"):
        with pytest.raises(ConfigurationError):
            tenant_acl(DOCUMENT, "acme", "pw", user=user)
    with pytest.raises(ConfigurationError):
        tenant_acl(DOCUMENT, "acme", "")
