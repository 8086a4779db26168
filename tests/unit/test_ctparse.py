"""The conntrack reply reader against messages encoded by pyroute2 (no kernel)."""

import socket

from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, nfct_msg

from connpin.kernel import conntrack as ct
from connpin.render import status


def message(**kw) -> bytes:
    msg = nfct_msg.create_from(**kw)
    msg["header"]["type"] = (1 << 8) | 0
    msg["nfgen_family"] = socket.AF_INET
    msg.encode()
    return bytes(msg.data)


def test_entry_fields_and_delete_handle() -> None:
    orig = NFCTAttrTuple(saddr="10.77.0.2", daddr="203.0.113.10", proto=6, sport=40000, dport=7)
    reply = NFCTAttrTuple(saddr="203.0.113.10", daddr="100.64.2.2", proto=6, sport=7,
                          dport=40000)
    data = message(tuple_orig=orig, tuple_reply=reply, status=ct.IPS_SRC_NAT | ct.IPS_SEEN_REPLY,
                   timeout=431990, mark=0x00910001, id=77)
    e = ct._entry(data, 0, len(data))
    assert (e.family, e.proto_name, e.mark, e.timeout) == (2, "tcp", 0x00910001, 431990)
    assert (e.orig.src, e.orig.dport, e.reply.dst) == ("10.77.0.2", 7, "100.64.2.2")
    assert e.nat == "100.64.2.2" and e.state == "REPLIED"
    assert e.handle[0] == socket.AF_INET and len(e.handle) % 4 == 1


def test_idle_is_the_full_timeout_minus_what_is_left() -> None:
    ep = ct.Endpoint("a", "b", 1, 2)
    e = ct.Entry(2, 6, ep, ep, ct.IPS_ASSURED, 431900, 0, 3, None, None, None, b"\x02")
    assert ct.idle(e, {"nf_conntrack_tcp_timeout_established": 432000}) == 100
    assert ct.idle(e, {}) is None
    udp = ct.Entry(2, 17, ep, ep, ct.IPS_ASSURED | ct.IPS_SEEN_REPLY, 100, 0, None, None, None,
                   None, b"\x02")
    assert ct.idle(udp, {"nf_conntrack_udp_timeout_stream": 120}) == 20


def test_status_shows_pinned_counts_and_bytes() -> None:
    from connpin import model, reconcile
    from connpin.render import status_text

    config = model.loads('[[uplink]]\nname = "a"\ninterface = "ppp0"\n'
                         '[[uplink]]\nname = "b"\ninterface = "ppp1"\n')
    result = reconcile.run(config, reconcile.Imagined(), effects=False)
    report = status.build(config, result, {"ppp0": (3, 5 << 20), "ppp1": (0, None)})
    text = status_text.text(report)
    assert "pinned" in text.splitlines()[0]
    assert "3 (5.0 MiB)" in text and text.splitlines()[2].rstrip().endswith("0")


def test_inside_tells_outbound_from_inbound() -> None:
    from connpin import pins

    here = pins.Inside(["10.77.0.0/24", "100.64.2.2/32", "fd00:77::/64"])
    assert "10.77.0.9" in here and "100.64.2.2" in here and "fd00:77::5" in here
    assert "203.0.113.10" not in here and "2001:db8::1" not in here and "bogus" not in here
