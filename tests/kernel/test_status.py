"""`connpin status` on the real kernel (the lab's router, hooks installed): uplinks in config
order (not in the order of their hashed marks), short states with since when (recorded by the
converge that saw the change), the reason of a down uplink under the table, where new
connections go (main's default route, named by its uplink), `--json` (schema 1) and
`--nagios`: OK, WARNING with one uplink down, CRITICAL with none or with connpin removed,
UNKNOWN for a bad config. Rows fit 100 columns.
"""

from __future__ import annotations

import json
import time

from helpers import KERNEL
from test_pinning import pinned

from connpin.lab import Lab
from connpin.render import status

pytestmark = KERNEL


def _status(lab: Lab, *args: str) -> tuple[int, str]:
    p = lab.connpin("status", *args, check=False)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, p.stdout


def test_status_states_since_json_and_nagios_with_a_down_uplink() -> None:
    with pinned(("ppp", "eth")) as lab:
        lab.uplink_up(1)
        lab.uplink_up(2)
        code, text = _status(lab)
        assert code == 0, text
        lines = text.splitlines()
        assert all(len(ln) <= 100 for ln in lines), text
        assert lines[0].split()[:4] == ["uplink", "interface", "state", "since"]
        # config order: isp1 then isp2 (isp2's mark sorts first)
        assert [ln.split()[:3] for ln in lines[1:3]] == [
            ["isp1", lab.iface(1), "up"], ["isp2", lab.iface(2), "up"]], text
        assert all(ln.split()[3] != "-" for ln in lines[1:3]), text  # since: recorded
        assert "new connections: the routing table chooses" in text
        code, line = _status(lab, "--nagios")
        assert code == 0 and line.startswith("CONNPIN OK - 2/2 uplinks live | live=2;;;0;2"), line

        went_down = time.time()
        lab.uplink_down(2)
        code, text = _status(lab)
        assert code == 0, text  # the kernel matches the plan: an uplink down is no drift
        row = next(ln for ln in text.splitlines() if ln.startswith("isp2 "))
        assert row.split()[2] == "down", text
        assert "  isp2: down: no such interface" in text or \
            "  isp2: down: interface is down" in text, text
        report = json.loads(_status(lab, "--json")[1])
        assert report["schema"] == 1
        assert [u["uplink"] for u in report["uplinks"]] == ["isp1", "isp2"]
        isp2 = report["uplinks"][1]
        assert isp2["state"] == "down" and isp2["up"] is False
        since = status.epoch(isp2["since"])
        assert since is not None and went_down - 2 <= since <= time.time() + 1, isp2
        assert report["uplinks"][0]["state"] == "up"
        main = report["new_connections"]["main"]
        assert report["new_connections"]["chosen_by"] == "routing table"
        assert main[0]["uplink"] == "isp1" and main[0]["interface"] == lab.iface(1), main
        code, line = _status(lab, "--nagios")
        assert code == 1, line
        assert line.startswith("CONNPIN WARNING - 1/2 uplinks live, isp2 down | "), line
        assert "isp2_up=0;;;0;1" in line and line.count("\n") == 1

        lab.uplink_down(1)
        code, line = _status(lab, "--nagios")
        assert code == 2 and line.startswith("CONNPIN CRITICAL - no live uplink"), line

        lab.uplink_up(1)
        lab.connpin("remove")
        code, line = _status(lab, "--nagios")
        assert code == 2 and "ruleset is not installed" in line, line

        bad = lab.workdir / "bad.toml"
        bad.write_text('[[uplink]]\nname = "x"\n')
        code, line = _status(lab, "--nagios", "-c", str(bad))
        assert code == 3 and line.startswith("CONNPIN UNKNOWN - ") and "bad.toml" in line, line
        assert line.count("\n") == 1
