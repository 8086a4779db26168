"""Marks and tables: inside the mask and ranges, stable under reordering and additions."""

import itertools

import pytest

from connpin import alloc, desired, model


def config(*names: str, mask: int = 0x00FF0000, extra: str = "") -> model.Config:
    text = f"[pinning]\nmark_mask = {mask:#x}\n{extra}"
    for i, n in enumerate(names):
        text += f'[[uplink]]\nname = "{n}"\ninterface = "if{i}"\n'
    return model.loads(text)


def test_deposit_and_extract_round_trip() -> None:
    for mask in (0x00FF0000, 0x0F000000, 0x00F0F000, 0x80000001):
        for idx in range(1, alloc.capacity(mask) + 1):
            mark = alloc.deposit(idx, mask)
            assert mark & ~mask == 0 and mark != 0
            assert alloc.extract(mark, mask) == idx


def test_capacity() -> None:
    assert alloc.capacity(0x00FF0000) == 255
    assert alloc.capacity(0x0F000000) == 15
    assert alloc.capacity(0x1) == 1


def test_marks_depend_on_names_only() -> None:
    names = ("isp-a", "isp-b", "lte", "fibre")
    ref = model.exact_marks(config(*names))
    for perm in itertools.permutations(names):
        assert model.exact_marks(config(*perm)) == ref
    # adding an uplink never moves the others
    more = model.exact_marks(config(*names, "starlink"))
    assert {k: more[k] for k in ref} == ref


def test_tables_follow_marks_inside_range() -> None:
    c = config("isp-a", "isp-b", extra="table_base = 5000\n")
    for s in model.exact_marks(c).values():
        assert s.table == 5000 + s.index - 1
        assert 5000 <= s.table < 5000 + 255
        assert s.mark & ~0x00FF0000 == 0


def test_collision_is_refused_naming_both() -> None:
    # find two names that hash to the same index in a 4-bit space
    seen: dict[int, str] = {}
    for i in range(1000):
        n = f"up{i}"
        h = alloc.home(n, 0x0F000000)
        if h in seen:
            pair = (seen[h], n)
            break
        seen[h] = n
    with pytest.raises(model.ConfigError, match=f"'{pair[0]}' and '{pair[1]}' both get mark"):
        config(*pair, mask=0x0F000000)


def test_pattern_instances_probe_past_taken_marks() -> None:
    c = model.loads('[pinning]\nmark_mask = 0x00030000\n'
                    '[[uplink]]\nname = "s"\ninterface = "ppp*"\n')
    u = c.uplinks[0]
    got = model.pattern_marks(c, u, ["ppp0", "ppp1", "ppp2"], set())
    assert sorted(s.index for s in got.values()) == [1, 2, 3]
    # same interfaces, other order: same marks
    assert model.pattern_marks(c, u, ["ppp2", "ppp0", "ppp1"], set()) == got
    with pytest.raises(model.ConfigError, match="no free mark"):
        model.pattern_marks(c, u, ["ppp0", "ppp1", "ppp2", "ppp3"], set())


def test_pattern_instances_avoid_exact_uplinks() -> None:
    c = model.loads('[[uplink]]\nname = "s"\ninterface = "ppp*"\n'
                    '[[uplink]]\nname = "b"\ninterface = "eth1"\n')
    links = {n: desired.Link(n, i, True, ("192.0.2.2",)) for i, n in
             enumerate(["ppp0", "ppp1", "eth1", "lo"])}
    slots = desired.slots(c, desired.Observed(links))
    assert sorted(i for _, i, _ in slots) == ["eth1", "ppp0", "ppp1"]
    assert len({s.index for _, _, s in slots}) == 3


def test_alloc_works_on_plain_values() -> None:
    got = alloc.exact_marks([("a", None), ("b", 0x00050000)], 0x00FF0000, 2000)
    assert got["b"] == alloc.Slot(5, 0x00050000, 2004)
    assert got["a"] == alloc.slot(alloc.home("a", 0x00FF0000), 0x00FF0000, 2000)
    with pytest.raises(alloc.Collision, match="'a' and 'c' both get mark 0x00050000"):
        alloc.exact_marks([("a", 0x00050000), ("c", 0x00050000)], 0x00FF0000, 2000)
    assert alloc.table_range(0x0F000000, 100) == range(100, 115)
    assert model.loads("").pinning.table_range == range(1000, 1255)
