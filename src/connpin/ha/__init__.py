"""Two routers, one set of pins (issue 16, docs/ha.md): connpin's side of an HA pair that runs
keepalived (VRRP) and conntrackd (conntrack replication, ct marks included).

Pure parts: `settings` (the [ha] config table), `conntrackd` (the conntrackd.conf that matters
for pinning), `keepalived` (the notify lines), `roles` (what promote / demote / fault do, as plain
values) and `peer` (do two routers' configs give the same marks and tables). `act` carries a
role change out (runs conntrackd, converges, flushes); `cli` is the `connpin ha` entry point.
Nothing is imported here, so `model` can import `connpin.ha.settings` without the rest.
"""
