#!/usr/bin/env bash
# demo.sh — Volant's main job, end to end. (Foundation stage: shows the
# manifest pipeline; later stages boot a VM here.)
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*" >&2; }
step "validate examples/caddy.json"
volant-manifest validate examples/caddy.json | jq '{valid, name, plugin_version}'
step "encode it for the kernel command line and decode it back"
volant-manifest encode --raw examples/caddy.json | volant-manifest decode | jq -c '.manifest.workload'
step "the kernel command-line fragment"
volant-manifest cmdline examples/caddy.json | jq '{bytes, budget}'
