# Sourced by the scripts here: make (or reuse) a virtualenv with esrs-fix and one mitmproxy major in it.
# usage: esrs_venv <name> <python> <mitmproxy spec> [extras]   -> prints nothing, sets VENV
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The interpreter for a Python minor version (3.11, 3.12...): pythonX.Y on PATH, else a pyenv install.
esrs_python() {
  local minor=$1 v
  if command -v pyenv >/dev/null 2>&1; then
    v=$(pyenv versions --bare 2>/dev/null | grep -E "^${minor//./\\.}(\.[0-9]+)?$" | sort -V | tail -n 1 || true)
    if [ -n "$v" ]; then PYENV_VERSION="$v" pyenv which "python$minor" 2>/dev/null && return 0; fi
  fi
  if command -v "python$minor" >/dev/null 2>&1 && "python$minor" -c 'import sys' >/dev/null 2>&1; then
    command -v "python$minor"; return 0
  fi
  return 1
}

esrs_venv() {
  local name=$1 python=$2 spec=$3 extras=${4:-}
  VENV="$ROOT/.venv/$name"
  local stamp="$VENV/.esrs-installed" want
  want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $spec $extras"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
    return 0
  fi
  echo "esrs-fix: setting up $VENV ($("$python" --version), $spec) ..." >&2
  rm -rf "$VENV"
  "$python" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2 2>/dev/null || true
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$spec" -e "$ROOT${extras:+[$extras]}" 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c 'import mitmproxy, stray_tls' || { echo "esrs-fix: installing into $VENV failed" >&2; exit 1; }
  echo "$want" > "$stamp"
}
