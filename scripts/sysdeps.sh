#!/usr/bin/env bash
# Installs the Debian packages the test suite starts for real: redis-server, chromium, node/npm, and
# espeak-ng (the command-line TTS that examples/pipecat_agent.py uses as the agent's voice).
# Idempotent: does nothing when they are already there.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing Debian packages: ${need[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
