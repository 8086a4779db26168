"""Hook scripts and the systemd unit: the install-time environment is carried into them, files
connpin did not write are never overwritten, the unit is quoted for systemd, NetworkManager's
machine-wide actions and pre-down are handled."""

from __future__ import annotations

import os
import subprocess

import pytest

from connpin import cli, hooks


@pytest.fixture
def cfg(tmp_path) -> str:
    path = tmp_path / "connpin.toml"
    path.write_text('[[uplink]]\nname = "a"\ninterface = "ppp0"\n')
    return str(path)


def test_settings_are_carried_into_the_script_quoted(tmp_path) -> None:
    environ = {"CONNPIN_IPTABLES": "iptables-legacy", "CONNPIN_NFT": "/opt/my nft",
               "CONNPIN_RUN_DIR": "/run/x'$(touch pwned)\n", "CONNPIN_FAULT": "3",
               "CONNPIN_CONFIG": "/elsewhere"}
    text = hooks.script(hooks.PPP[0], None, environ)
    # run it with `env` in place of connpin: what the hook's connpin would see
    probe = tmp_path / "probe"
    probe.write_text(text.replace(hooks.command(None), "/bin/sh -c 'env -0' sh"))
    probe.chmod(0o755)
    p = subprocess.run([str(probe)], env={"PPP_IFACE": "ppp0", "CONNPIN_IPTABLES": "other"},
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    seen = dict(item.split("=", 1) for item in p.stdout.split("\0") if "=" in item)
    assert seen["CONNPIN_IPTABLES"] == "iptables-legacy"
    assert seen["CONNPIN_NFT"] == "/opt/my nft"
    assert seen["CONNPIN_RUN_DIR"].startswith("/run/x'$(touch pwned)")
    assert "CONNPIN_FAULT" not in seen and "CONNPIN_CONFIG" not in seen
    assert not (tmp_path / "pwned").exists()


def test_install_never_overwrites_a_file_it_did_not_write(capsys, cfg, tmp_path) -> None:
    root = tmp_path / "root"
    theirs = root / "etc/ppp/ip-down.d/connpin"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("#!/bin/sh\necho mine\n")
    code = cli.main(["-c", cfg, "hooks", "install", "--ppp", "--root", str(root)])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1
    assert "not written by connpin" in err and str(theirs) in err
    assert theirs.read_text() == "#!/bin/sh\necho mine\n"
    assert not (root / "etc/ppp/ip-up.d/connpin").exists()  # nothing written at all
    theirs.unlink()
    assert cli.main(["-c", cfg, "hooks", "install", "--ppp", "--root", str(root)]) == 0
    assert cli.main(["-c", cfg, "hooks", "install", "--ppp", "--root", str(root)]) == 0  # ours


@pytest.mark.parametrize("name", ["a%hb", "a$HOME b", 'q"uote\\s', "semi;colon"])
def test_systemd_unit_escapes_specifiers_and_quotes(capsys, tmp_path, name) -> None:
    d = tmp_path / name
    d.mkdir()
    path = d / "c.toml"
    path.write_text("")
    root = tmp_path / "root"
    assert cli.main(["-c", str(path), "hooks", "install", "--systemd", "--root", str(root)]) == 0
    text = (root / "etc/systemd/system/connpin.service").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    plain = hooks.unit("/etc/connpin/connpin.toml")  # no line injected: as many as a plain path
    assert line.endswith(" watch") and len(text.splitlines()) == len(plain.splitlines())
    word = hooks.systemd_word(str(path))
    assert f" -c {word} watch" in line
    assert "%" not in word.replace("%%", "") and "$" not in word.replace("$$", "")


def test_systemd_unit_refuses_a_newline_in_the_path(capsys, tmp_path) -> None:
    d = tmp_path / "x\nExecStartPre=touch pwned\n"
    d.mkdir()
    (d / "c.toml").write_text("")
    root = tmp_path / "root"
    code = cli.main(["-c", str(d / "c.toml"), "hooks", "install", "--systemd",
                     "--root", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "systemd unit" in err
    assert not (root / "etc/systemd/system/connpin.service").exists()


def test_networkmanager_machine_wide_actions_and_pre_down(capsys, cfg, tmp_path) -> None:
    root = tmp_path / "root"
    assert cli.main(["-c", cfg, "hooks", "install", "--networkmanager", "--root",
                     str(root)]) == 0
    d = root / "etc/NetworkManager/dispatcher.d"
    assert (d / "pre-down.d/50-connpin").read_text() == (d / "50-connpin").read_text()
    assert os.access(d / "pre-down.d/50-connpin", os.X_OK)
    env = {"PATH": os.environ["PATH"]}
    for args in (["", "connectivity-change"], ["", "hostname"], ["", "up"]):
        p = subprocess.run([str(d / "50-connpin"), *args], env=env, capture_output=True,
                           text=True)
        assert (p.returncode, p.stdout, p.stderr) == (0, "", ""), args
    p = subprocess.run([str(d / "pre-down.d/50-connpin"), "eth9", "pre-down"], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0 and "not an uplink" in p.stdout
    assert len(hooks.remove(["networkmanager"], str(root))) == 2
