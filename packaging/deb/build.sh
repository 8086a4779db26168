#!/bin/sh
# Build connpin_VERSION_all.deb with dpkg-deb from a staged root (docs/packaging.md).
#   sh packaging/deb/build.sh DISTDIR OUTDIR     (DISTDIR holds the wheel `make wheel` built)
# connpin and its Python dependencies go into a venv in /usr/lib/connpin made with the system
# python3 (so the package depends on that python3 minor version); /usr/sbin/connpin runs it.
# The hooks and the unit are installed but inert until /etc/connpin/connpin.toml exists
# (the hooks exit 0 without it; the unit is not enabled).
set -eu
DIST=$1 OUT=$2
PY=${PY:-.venv/bin/python}           # runs pip and the hook/unit generator (connpin importable)
SYSPY=${DEB_PYTHON:-/usr/bin/python3}  # the interpreter the installed package runs on
HERE=$(dirname "$0")
WHEEL=$(ls "$DIST"/connpin-*-py3-none-any.whl)
VERSION=$(basename "$WHEEL" | cut -d- -f2)
PYVER=$("$SYSPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
ROOT=$OUT/root
rm -rf "$OUT" && mkdir -p "$ROOT/DEBIAN"
umask 022

# the program: a venv (no pip) holding the wheel and its dependencies
"$SYSPY" -m venv --without-pip "$ROOT/usr/lib/connpin"
SITE=$ROOT/usr/lib/connpin/lib/python$PYVER/site-packages
"$PY" -m pip install -q --no-compile --disable-pip-version-check --target "$SITE" "$WHEEL"
rm -rf "$SITE/bin" "$ROOT/usr/lib/connpin/include" "$ROOT/usr/lib/connpin/bin/activate"* "$ROOT/usr/lib/connpin/bin/Activate"*
sed -i '/^command = /d' "$ROOT/usr/lib/connpin/pyvenv.cfg"  # names the build directory
install -D -m 755 "$HERE/connpin.sh" "$ROOT/usr/sbin/connpin"

# hooks and unit (from connpin.hooks, so they match `connpin hooks install`), marked as conffiles
"$PY" "$HERE/etc.py" "$ROOT"
(cd "$ROOT" && find etc -type f | sort | sed 's|^|/|') > "$ROOT/DEBIAN/conffiles"

# docs: man pages, completion, examples, copyright, changelog
SHARE=$SITE/connpin/share
install -D -m 644 "$SHARE/man/connpin.8" "$ROOT/usr/share/man/man8/connpin.8"
install -D -m 644 "$SHARE/man/connpin.toml.5" "$ROOT/usr/share/man/man5/connpin.toml.5"
gzip -9n "$ROOT/usr/share/man/man8/connpin.8" "$ROOT/usr/share/man/man5/connpin.toml.5"
install -D -m 644 "$SHARE/completion/bash/connpin" \
  "$ROOT/usr/share/bash-completion/completions/connpin"
install -D -m 644 "$SHARE/completion/zsh/_connpin" "$ROOT/usr/share/zsh/vendor-completions/_connpin"
DOC=$ROOT/usr/share/doc/connpin
mkdir -p "$DOC/examples"
cp "$SHARE"/examples/*.toml "$DOC/examples/"
{ printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n'
  printf 'Upstream-Name: connpin\n\nFiles: *\nCopyright: 2026 the connpin developers\n'
  printf 'License: MIT\n'; sed -n '/^Permission/,$p' LICENSE | sed 's/^$/./; s/^/ /'
} > "$DOC/copyright"
DATE=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")
printf 'connpin (%s) unstable; urgency=medium\n\n  * Package built from the connpin source tree.\n\n -- the connpin developers <connpin@example.org>  %s\n' \
  "$VERSION" "$DATE" | gzip -9n > "$DOC/changelog.gz"  # native: no Debian revision
chmod -R u+rwX,go+rX,go-w "$ROOT"

(cd "$ROOT" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' | sed 's|^\./||' | sort \
  | xargs md5sum) > "$ROOT/DEBIAN/md5sums"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
NEXT=$("$SYSPY" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
cat > "$ROOT/DEBIAN/control" <<CONTROL
Package: connpin
Version: $VERSION
Architecture: all
Maintainer: the connpin developers <connpin@example.org>
Installed-Size: $SIZE
Depends: python3 (>= $PYVER), python3 (<< $NEXT), iproute2
Recommends: nftables, conntrack
Suggests: iptables
Section: net
Priority: optional
Homepage: https://example.invalid/connpin
Description: connection pinning for Linux routers with several uplinks
 connpin keeps each connection on the uplink it first used (conntrack mark per
 uplink, ip rule fwmark, a routing table per uplink), declaratively and
 atomically, beside the firewall and other mark users on the machine.
 .
 The hooks (pppd, NetworkManager, networkd-dispatcher, ifupdown, dhclient) and the
 systemd unit do nothing until /etc/connpin/connpin.toml exists.
CONTROL
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$OUT/connpin_${VERSION}_all.deb" >/dev/null
echo "$OUT/connpin_${VERSION}_all.deb"
