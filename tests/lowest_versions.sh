#!/usr/bin/env bash
# The dependency floors, proven: a fresh venv with every direct dependency of pyproject.toml pinned
# to its floor exactly (the package, its test, notebooks and sd extras, and the build backend), then
# the fast tests in it.
#
#   bash tests/lowest_versions.sh            # or: make test-lowest
#   PYTHON=python3.10 LOWEST_VENV=/tmp/ld-lowest bash tests/lowest_versions.sh
#
# PYTHON defaults to python3.10 (the lowest Python requires-python allows) when there is one.
# Dependencies of dependencies resolve to what the pins allow (like `uv --resolution lowest-direct`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LOWEST_VENV:-${TMPDIR:-/tmp}/layoutdiffuse-lowest}
if [ -z "${PYTHON:-}" ]; then PYTHON=python3; python3.10 -c "" 2>/dev/null && PYTHON=python3.10; fi
start=$SECONDS

"$PYTHON" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "tomli; python_version < '3.11'"
# every ">=X" of [build-system] and of the listed dependency groups becomes "==X"
"$VENV/bin/python" - "$VENV/floors.txt" <<'EOF'
import re
import sys

try:
    import tomllib
except ImportError:
    import tomli as tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
requirements = list(project["build-system"]["requires"]) + project["project"]["dependencies"]
for extra in ("test", "notebooks", "sd"):
    requirements += project["project"]["optional-dependencies"][extra]
pins = {}
for requirement in requirements:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([0-9][0-9A-Za-z.]*)", requirement.replace(" ", ""))
    if match is None:
        sys.exit(f"{requirement!r}: every dependency needs a floor of the form NAME>=VERSION")
    name, floor = match.group(1).lower(), match.group(2)
    if pins.setdefault(name, floor) != floor:
        sys.exit(f"{name}: two floors ({pins[name]} and {floor}); keep one")
with open(sys.argv[1], "w") as f:
    f.writelines(f"{name}=={floor}\n" for name, floor in sorted(pins.items()))
EOF
echo "floors: $(tr '\n' ' ' < "$VENV/floors.txt")"
# the build backend at its floor too: build without isolation, with the pinned setuptools
"$VENV/bin/python" -m pip install -q -U -c "$VENV/floors.txt" setuptools
"$VENV/bin/python" -m pip install -q --no-build-isolation -c "$VENV/floors.txt" -e ".[test,notebooks,sd]"
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -m pip freeze --exclude-editable > "$VENV/installed.txt"
echo "installed in $((SECONDS - start)) s ($(du -sh "$VENV" | cut -f1)); versions in $VENV/installed.txt"
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
MPLBACKEND=agg "$VENV/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider tests
echo "lowest versions: install and fast tests in $((SECONDS - start)) s"
