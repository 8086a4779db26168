"""The delay line's nfnetlink_queue messages (pure): what the kernel expects byte for byte
(nlmsghdr, nfgenmsg with the queue big-endian, attributes padded to 4) and the packet id read
back from a packet message."""

from __future__ import annotations

import socket
import struct

from connpin.lab import delay


def test_a_verdict_accepts_one_packet_of_one_queue() -> None:
    msg = delay.verdict(7, 0x01020304)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (len(msg), (3 << 8) | 1, 1, 0, 0)
    assert msg[16:20] == bytes([socket.AF_UNSPEC, 0, 0, 7])  # nfgenmsg: res_id = queue, BE
    assert msg[20:] == struct.pack("=HH", 12, 2) + struct.pack("!II", 1, 0x01020304)


def test_bind_asks_for_acks_and_pads_the_params() -> None:
    msgs = delay.bind_messages(7, maxlen=500)
    assert [struct.unpack_from("=I", m, 8)[0] for m in msgs] == [1, 2, 3, 4]
    assert all(struct.unpack_from("=H", m, 6)[0] == 0x5 for m in msgs)  # REQUEST | ACK
    assert all(len(m) % 4 == 0 and struct.unpack_from("=I", m)[0] == len(m) for m in msgs)
    cmd, params, maxlen, flags = (m[20:] for m in msgs)
    assert cmd == struct.pack("=HH", 8, 1) + bytes([1, 0, 0, 0])  # BIND, pf AF_UNSPEC
    assert params == struct.pack("=HH", 9, 2) + struct.pack("!IB", 0, 1) + b"\0\0\0"  # meta
    assert maxlen == struct.pack("=HH", 8, 3) + struct.pack("!I", 500)
    assert flags == (struct.pack("=HH", 8, 4) + struct.pack("!I", 1)
                     + struct.pack("=HH", 8, 5) + struct.pack("!I", 1))  # fail-open


def test_packet_ids_are_read_from_a_datagram_of_several_messages() -> None:
    def packet(pid: int) -> bytes:
        mark = struct.pack("=HH", 8, 6) + struct.pack("!I", 0xFF)  # another attribute first
        hdr = struct.pack("=HH", 11, 1) + struct.pack("!IHB", pid, 0x0800, 2) + b"\0"
        return delay.message(delay.NFQNL_MSG_PACKET, 7, mark + hdr)

    data = packet(41) + packet(42)
    got = [(kind, delay.packet_id(payload)) for kind, _, payload in delay.parse(data)]
    assert got == [((3 << 8) | 0, 41), ((3 << 8) | 0, 42)]
    assert delay.packet_id(b"\0" * 4) is None
