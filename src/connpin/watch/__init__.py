"""`connpin watch`: follow the kernel's rtnetlink events and converge when an uplink changes, so no
hook script is needed whatever brings uplinks up (pppd, a DHCP client, NetworkManager, `ip`).

Events are hints, never the state: each one names an interface, and when that interface belongs
to a configured uplink the daemon runs the same `engine.converge` as `apply`/`up`/`down`, which
re-reads the kernel. nf_tables events about connpin's own table (another program flushing or
editing it, e.g. a firewall reload) trigger the same converge. The whole kernel is re-read at
start, after an event socket overflowed (ENOBUFS: events were lost), after an error on a socket
(rebuilt in place) and every `resync` seconds, so a lost event costs at most one period.

The package: `classify` (which messages matter; pure), `schedule` (coalescing, back-off,
resync, sweep and watchdog timers, failure logging; pure, clock injected), `events` (the netlink
sockets, bounded reads), `systemd` (sd_notify, watchdog, STATUS=), `record` (what `connpin
status` shows), `daemon` (the loop around them).

Signals: SIGHUP reloads the config (a bad one, or one without uplinks unless it says
`allow_empty = true`, is reported and the running one kept), SIGTERM and SIGINT stop cleanly and
leave the pinning installed (`connpin remove` uninstalls).
"""

from connpin.watch.daemon import Watcher, run
from connpin.watch.schedule import GAP, RESYNC, RETRY, SWEEP
from connpin.watch.systemd import notify

__all__ = ["GAP", "RESYNC", "RETRY", "SWEEP", "Watcher", "notify", "run"]
