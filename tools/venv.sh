#!/usr/bin/env bash
# tools/venv.sh DIR REQUIREMENTS: makes (or refreshes) the Python venv DIR with exactly the
# pinned packages of REQUIREMENTS, from PyPI, with Debian's python3; never the system's
# site-packages. Skips everything when DIR was made from the same file (a copy of it is kept
# as DIR/.ibrain-ok). Used by tools/setup.sh and by the perf/ scripts that need a venv.
set -euo pipefail
dir=$1 req=$2
if [ ! -x "$dir/bin/python" ] || ! cmp -s "$req" "$dir/.ibrain-ok"; then
  echo "venv: installing $(basename "$req") into $dir" >&2
  /usr/bin/python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$dir/.ibrain-ok"
fi
