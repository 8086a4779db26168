"""Config defaults are the dataclasses' defaults: a file that leaves a key out gets the field's
default, and every field is a key of the file."""

from dataclasses import fields

from connpin import model


def test_empty_pinning_is_the_dataclass_default() -> None:
    assert model.loads("").pinning == model.Pinning()
    assert model.loads("[pinning]\n").pinning == model.Pinning()


def test_uplink_defaults_are_the_dataclass_defaults() -> None:
    got = model.loads('[[uplink]]\nname = "a"\ninterface = "eth1"\n').uplinks[0]
    assert got == model.Uplink("a", "eth1", priority=1)


def test_every_field_is_a_known_key() -> None:
    for f in fields(model.Pinning):
        model.loads(f"[pinning]\n{f.name} = {_toml(getattr(model.Pinning(), f.name))}\n")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)
