"""iptables rules setting the conntrack label bits of the passive health signal (126/127 by
default: `-m connlabel --label N --set`) are conflicts `check` names and `apply` refuses, for
iptables-nft and iptables-legacy alike (the nft case: test_passive)."""

from __future__ import annotations

from helpers import KERNEL

from connpin.lab import Lab

pytestmark = KERNEL


def test_iptables_connlabel_rules_on_the_passive_bits_are_refused_and_named() -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        text = lab.default_config(masquerade=True)
        for k in lab.ks:
            text = text.replace(f'name = "isp{k}"\n',
                                f'name = "isp{k}"\ncheck = ["icmp:{Lab.SERVER}"]\n')
        lab.write_config(text)
        rules = (("iptables-nft", "127"), ("ip6tables-legacy", "126"))
        for tool, bit in rules:
            lab.exec("router", [tool, "-t", "mangle", "-A", "PREROUTING", "-m", "connlabel",
                                "--label", bit, "--set"])
        check = lab.connpin("check", check=False)
        assert check.returncode == 2, check
        for flavour, family, bit in (("nft", "ip", "127"), ("legacy", "ip6", "126")):
            assert (f'conflict: iptables-{flavour} {family} table mangle: -A PREROUTING -m '
                    f'connlabel --label "{bit}" --set: sets conntrack label bit {bit}'
                    ) in check.stdout, check.stdout
        apply = lab.connpin("apply", check=False)
        assert apply.returncode == 2 and "sets conntrack label bit 127" in apply.stderr, apply
        assert "inet connpin" not in lab.exec("router", ["nft", "list", "tables"]).stdout
        for tool, bit in rules:
            lab.exec("router", [tool, "-t", "mangle", "-D", "PREROUTING", "-m", "connlabel",
                                "--label", bit, "--set"])
        assert "label" not in lab.connpin("check", check=False).stdout
