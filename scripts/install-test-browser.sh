#!/usr/bin/env sh
# Debian's chromium and chromium-driver, for the dashboard tests (tests/test_dashboard.py drives them headless).
# A no-op when both are present; CI runs as root on Debian, elsewhere apt-get runs through sudo.
# The tests fail, not skip, without them: set PEFTLAB_CHROMIUM / PEFTLAB_CHROMEDRIVER to use other binaries.
set -eu
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ -n "${PEFTLAB_CHROMIUM:-}" ] && [ -n "${PEFTLAB_CHROMEDRIVER:-}" ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
