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
    """The notify lines that run `program -c config ha ROLE`: to paste into the one
    vrrp_instance (none or one name given), or a `vrrp_sync_group` of `instances` (several:
    keepalived then changes their roles together and notifies once)."""
    for word in (*program, config):
        if not _WORD.match(word):
            raise Unsafe(f"{word!r} cannot be a word of a keepalived notify command (letters, "
                         "digits and _./+:@=,- only)")
    for name in instances:
        if not _INSTANCE.match(name):
            raise Unsafe(f"{name!r} is not a vrrp_instance name keepalived accepts here")
    base = " ".join([*program, "-c", config, "ha"])
    notify = "\n".join(f'    {key} "{base} {role}"' for key, role in NOTIFY)
    head = ("# keepalived.conf: connpin follows the router's VRRP role (docs/ha.md). keepalived\n"
            "# runs these commands itself, without a shell, as root; in global_defs set\n"
            "#     script_user root\n"
            "#     enable_script_security\n"
            "# (the program and the directories above it must be writable by root only).\n")
    if len(instances) > 1:
        group = "\n".join(f"        {n}" for n in instances)
        return f"{head}vrrp_sync_group connpin {{\n    group {{\n{group}\n    }}\n{notify}\n}}\n"
    where = (f"vrrp_instance {instances[0]}" if instances else
             "your vrrp_instance (with several instances: a vrrp_sync_group of them)")
    return f"{head}# Add these lines to {where}:\n{notify}\n"
