#!/usr/bin/env bash
# The benchmark's peers, each from its own package manager (skipped where there is none):
#   pebble                         PyPI   (pip install -e '.[bench]')
#   bubblewrap, firejail           Debian (apt-get; needs root)
#   @anthropic-ai/sandbox-runtime  npm    (the `srt` command; needs ripgrep and socat)
# `python -m bench` reports any peer still missing, and why, instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."
SRT_VERSION=0.0.83
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[bench]'
if command -v apt-get >/dev/null; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        bubblewrap firejail ripgrep socat
else
    echo "no apt-get here: install bubblewrap, firejail, ripgrep and socat yourself" >&2
fi
if command -v npm >/dev/null; then
    as_root npm install -g --silent "@anthropic-ai/sandbox-runtime@$SRT_VERSION"
else
    echo "no npm here: sandbox-runtime (srt) will be reported missing" >&2
fi
