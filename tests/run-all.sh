#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
# Creates .venv (unless a virtualenv is already active), installs the package with its
# test, dev and train extras (training tests run too), installs the Debian packages the
# integration tests drive (when run as root and they are missing), then runs ruff and
# the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e '.[test,dev,train]'

DEBIAN_PACKAGES=(openssl rsyslog rsyslog-openssl prometheus)
if ((${#DEBIAN_PACKAGES[@]})) && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

ruff check .
python -m pytest "$@"
