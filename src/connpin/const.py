"""Kernel and domain constants that several layers name: defined once, imported everywhere.

A leaf module: it imports nothing from connpin, so the pure core, the renderers, the kernel
adapters, the daemon and the lab can all share it without an import cycle.
"""

#: The main routing table (RT_TABLE_MAIN).
MAIN_TABLE = 254
#: A link's administrative up flag (IFF_UP in ifinfomsg.ifi_flags).
IFF_UP = 0x1
#: IPv6 prefixes never pinned nor re-routed: link-local and multicast.
NEVER_PINNED6 = ("fe80::/10", "ff00::/8")
#: connpin choosing uplinks: new connections draw a number (or hash their source) modulo this,
#: and each live uplink owns a slice of the range proportional to its weight.
CHOICE_SPACE = 65536
