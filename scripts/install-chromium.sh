#!/usr/bin/env bash
# Debian's chromium for the report's browser test (tests/test_report_browser.py). Does nothing when
# /usr/bin/chromium is there already; needs root (or sudo) and the Debian package mirror otherwise.
# Exits 0 when chromium is there afterwards, 1 when it could not be installed (the test then skips).
set -uo pipefail

CHROMIUM=/usr/bin/chromium
[[ -x "$CHROMIUM" ]] && exit 0

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-chromium: not root and no passwordless sudo; skipping (the browser test will skip)" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null; then
    echo "install-chromium: no apt-get (not Debian); install chromium yourself to run the browser test" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null \
    && $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
if [[ ! -x "$CHROMIUM" ]]; then
    echo "install-chromium: apt-get install chromium failed; the browser test will skip" >&2
    exit 1
fi
echo "install-chromium: $("$CHROMIUM" --version 2>/dev/null)"
