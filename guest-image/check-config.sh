#!/usr/bin/env bash
# Verify a resolved kernel .config against the fragment it was made from.
# `make olddefconfig` silently drops a symbol whose dependencies are unmet and silently
# re-enables a default-y one, so every line of the fragment is checked here:
#   CONFIG_FOO=val            -> must appear exactly so in .config
#   # CONFIG_FOO is not set   -> must not be =y or =m in .config
# Usage: check-config.sh FRAGMENT DOT_CONFIG     (exit 1 and list offenders on mismatch)
set -euo pipefail
frag=${1:?usage: check-config.sh FRAGMENT DOT_CONFIG}
cfg=${2:?usage: check-config.sh FRAGMENT DOT_CONFIG}
bad=0; n=0
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    CONFIG_*=*)
      n=$((n + 1)); sym=${line%%=*}
      if ! grep -qxF -- "$line" "$cfg"; then
        have=$(grep -E "^(# )?${sym}[= ]" "$cfg" || true)
        echo "check-config: MISSING  $line   (resolved: ${have:-absent, dependencies unmet?})" >&2
        bad=1
      fi ;;
    "# CONFIG_"*" is not set")
      n=$((n + 1)); sym=${line#\# }; sym=${sym%% *}
      if have=$(grep -E "^${sym}=" "$cfg"); then
        echo "check-config: NOT OFF  $sym   (resolved: $have; something selects it)" >&2
        bad=1
      fi ;;
  esac
done < "$frag"
if [ "$bad" != 0 ]; then
  echo "check-config: $cfg does not satisfy $frag" >&2
  exit 1
fi
echo "check-config: all $n fragment settings present in $cfg"
