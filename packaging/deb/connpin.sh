#!/bin/sh
# connpin, installed by the connpin package: runs the program in /usr/lib/connpin (isolated
# from PYTHON* variables and the user's site-packages).
here=$(dirname "$(readlink -f "$0")")
exec "$here/../lib/connpin/bin/python3" -I -m connpin "$@"
