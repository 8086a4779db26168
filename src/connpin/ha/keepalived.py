"""The keepalived.conf lines that run connpin on every role change of the pair (pure).

keepalived splits a quoted notify string into words and runs it itself, without a shell, so
the lines call `connpin ha promote|demote|fault` directly: no script file, nothing a shell could
interpret. Every word is checked here to be one keepalived reads as one word (no whitespace,
quotes, backslashes or `$`); the role is a fixed word and connpin's parser checks the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"^[A-Za-z0-9_./+:@=,-]+$")
_INSTANCE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: keepalived notify keyword -> connpin ha role
NOTIFY = (("notify_master", "promote"), ("notify_backup", "demote"),
          ("notify_fault", "fault"), ("notify_stop", "fault"))


class Unsafe(ValueError):
    """A word keepalived would split, or read as a quote or a variable."""


def render(program: Sequence[str], config: str, instances: Sequence[str] = ()) -> str:
    """A `vrrp_sync_group` whose notify lines run `program -c config ha ROLE`. `instances`: the
    vrrp_instance names to group (placeholders when none are given)."""
    for word in (*program, config):
        if not _WORD.match(word):
            raise Unsafe(f"{word!r} cannot be a word of a keepalived notify command (letters, "
                         "digits and _./+:@=,- only)")
    for name in instances:
        if not _INSTANCE.match(name):
            raise Unsafe(f"{name!r} is not a vrrp_instance name keepalived accepts here")
    names = list(instances) or ["VI_LAN      # your vrrp_instance names: the LAN address and,",
                                "VI_WAN      # with topology \"shared\", the WAN addresses"]
    base = " ".join([*program, "-c", config, "ha"])
    group = "\n".join(f"        {n}" for n in names)
    notify = "\n".join(f'    {key} "{base} {role}"' for key, role in NOTIFY)
    return f"""# keepalived.conf: connpin follows the pair's VRRP role (docs/ha.md). keepalived runs
# these commands itself, without a shell, as root; in global_defs set
#     script_user root
#     enable_script_security
# (the program and the directories above it must be writable by root only).
vrrp_sync_group connpin {{
    group {{
{group}
    }}
{notify}
}}
"""
