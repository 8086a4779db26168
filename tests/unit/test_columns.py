"""The one column formatter (render/columns.py) that plan, status, `connections` and the
lab's demo table print with."""

import random

from connpin.render.columns import columns

ROWS = [("uplink", "interface", "state"), ("isp1", "ppp0", "up"), ("isp-long", "eth1", "")]


def test_columns_align_left_to_the_widest_cell_and_strip_trailing_blanks() -> None:
    assert columns(ROWS) == [
        "uplink    interface  state",
        "isp1      ppp0       up",
        "isp-long  eth1",
    ]


def test_indent_goes_before_every_line_and_a_rule_under_the_first_row() -> None:
    assert columns(ROWS, indent="#   ", rule="-") == [
        "#   uplink    interface  state",
        "#   --------  ---------  -----",
        "#   isp1      ppp0       up",
        "#   isp-long  eth1",
    ]
    assert columns(ROWS[:1], indent="  ") == ["  uplink  interface  state"]
    assert columns([]) == []


def test_same_bytes_as_the_formatters_it_replaced() -> None:
    """The four copies it replaced (status, plan, `connections`, the demo table), as they were."""
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 6)
        rows = [tuple("".join(rng.choice("ab c") for _ in range(rng.randint(1, 9)))
                      for _ in range(n)) for _ in range(rng.randint(1, 6))]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        cells = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        status = [c.rstrip() for c in cells]
        plan = [f"#   {c}".rstrip() for c in cells]
        listing = ["  " + c.rstrip() for c in cells]
        demo = status[:1] + ["  ".join("-" * w for w in widths)] + status[1:]
        assert columns(rows) == status
        assert columns(rows, indent="#   ") == plan
        if all(c.strip() for c in cells):  # a row of blanks only: "  " was kept, now stripped
            assert columns(rows, indent="  ") == listing
        assert columns(rows, rule="-") == demo
