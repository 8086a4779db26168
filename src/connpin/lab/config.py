"""Text the lab writes (pure): connpin's config for the lab's uplinks, and the nft rulesets of
the lab's own machines (the router's port forward and optional masquerade, an ISP's IPv6
source check)."""

from __future__ import annotations

import json

from connpin.lab.addressing import Addressing

NAT6 = ("masquerade", "nptv6", "none")


def connpin_config(plan: Addressing, *, backend: str = "nftables", masquerade: bool = True,
                   nat6: str = "none", pinning: dict[str, object] | None = None) -> str:
    """A connpin config for the plan's uplinks: isp1..ispN on their interfaces.

    nat6: "masquerade", "nptv6" (fd00:77::/64 to each ISP's 2001:db8:k:77::/64) or "none".
    """
    if nat6 not in NAT6:
        raise ValueError(f"nat6 is one of {', '.join(NAT6)}, not {nat6!r}")
    pinning = pinning or {}
    lines = ["[pinning]"]
    if backend != "nftables" and "backend" not in pinning:
        lines.append(f'backend = "{backend}"')
    for key, value in pinning.items():
        lines.append(f"{key} = {toml_value(key, value)}")
    for k in plan.ks:
        lines += ["", "[[uplink]]", f'name = "isp{k}"', f'interface = "{plan.iface(k)}"']
        if plan.kind(k) == "eth":
            lines.append('gateway = "auto"')
        lines.append(f"masquerade = {'true' if masquerade else 'false'}")
        if nat6 == "masquerade":
            lines.append("masquerade6 = true")
        elif nat6 == "nptv6":
            lines.append(f'nptv6 = {{ "{plan.LAN_PREFIX6}" = "{plan.npt_prefix(k)}" }}')
    return "\n".join(lines) + "\n"


def toml_value(key: str, value: object) -> str:
    """A TOML value; ints under a key naming a mark or mask are written as 0x%08x."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"0x{value:08x}" if ("mask" in key or "mark" in key) and value >= 0 else str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(key, v) for v in value) + "]"
    raise TypeError(f"cannot write {key}={value!r} as TOML")


def router_ruleset(plan: Addressing, *, masquerade: bool, ipv6: bool) -> str:
    """The lab router's own nft table: the port forward to the LAN host, and masquerade on
    every uplink when the lab stands in for connpin's."""
    fwd = f'    iifname {{ "ppp*", "wan*" }} tcp dport {plan.FORWARD_PORT} '
    return (
        "table inet lab {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f"{fwd}dnat ip to {plan.LAN_HOST}:{plan.FORWARD_PORT}\n"
        + (f"{fwd}dnat ip6 to [{plan.LAN_HOST6}]:{plan.FORWARD_PORT}\n" if ipv6 else "") +
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        + ('    oifname { "ppp*", "wan*" } masquerade\n' if masquerade else "") +
        "  }\n"
        "}\n"
    )


def isp_ruleset6(plan: Addressing, k: int) -> str:
    """ISP k's IPv6 source check (IPv6 has no rp_filter): drop and count (counter `spoofed`)
    what its customer sends from outside the delegated prefix."""
    return ("table ip6 isp {\n  counter spoofed { }\n  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f'    iifname "cust0" ip6 saddr != {plan.delegated(k)} counter name spoofed drop\n'
            "  }\n}\n")
