"""Backends for the kernel suite: the pinning stories (test_pinning, test_ipv6) run against
nftables and iptables (iptables-nft) in full, and a representative subset against
iptables-legacy, to keep `make test` short. A test sees its backend as the `backend` fixture;
labs write `backend = "iptables"` into their default config and connpin (and the hooks) get
CONNPIN_IPTABLES=<flavour>.

`CONNPIN_TEST_BACKENDS=nftables,iptables-nft,iptables-legacy` runs every listed backend on
every parametrised test (e.g. the whole suite on iptables-legacy).
"""

from __future__ import annotations

import os

import pytest

from connpin.lab import Lab

pytest.register_assert_rewrite("helpers")  # the shared checks (helpers.py) explain failures too

PARAMETRISED = {"test_pinning", "test_ipv6"}
DEFAULT = ("nftables", "iptables-nft")
#: About nft itself, or no connpin at all: nftables only.
NFT_ONLY = {
    "test_9b_a_failed_apply_keeps_the_previous_state",
    "test_10_control_without_pinning_fails_the_stories",
    "test_golden_rulesets_load_in_the_kernel",
    "test_v6_control_without_pinning_fails_the_stories",
}
#: The representative subset for iptables-legacy: outbound and inbound stories (both uplink
#: kinds, both families), fail closed, and remove restoring everything.
LEGACY = (
    "test_1_", "test_2_", "test_5b_", "test_8_", "test_9_",
    "test_v6_1_2_outbound_and_inbound_stories", "test_v6_apply_",
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    if metafunc.module.__name__.rsplit(".", 1)[-1] not in PARAMETRISED:
        return
    name = metafunc.function.__name__
    chosen = os.environ.get("CONNPIN_TEST_BACKENDS")
    if name in NFT_ONLY:
        params = ["nftables"]
    elif chosen:
        params = [b.strip() for b in chosen.split(",") if b.strip()]
    else:
        params = list(DEFAULT) + (["iptables-legacy"] if name.startswith(LEGACY) else [])
    metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture(autouse=True)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name = getattr(request, "param", "nftables")
    if name != "nftables":
        monkeypatch.setenv("CONNPIN_IPTABLES", name)
        monkeypatch.setattr(Lab, "backend", "iptables")
    return name
