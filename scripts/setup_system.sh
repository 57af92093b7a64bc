#!/usr/bin/env bash
# Installs the Debian packages the workflow needs (speech synthesizers for the demo corpus, sox).
# Idempotent: does nothing when every package is present. As root it installs; as another user it
# prints the exact commands to run and exits 1.
set -euo pipefail

PACKAGES=(
  espeak-ng espeak-ng-data mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1
  flite festival festvox-kdlpc16k festvox-rablpc16k festvox-don festvox-us-slt-hts
  libttspico-utils libttspico-data
)
# `--test`: the packages of the tests' one-node SLURM cluster instead (main component only)
if [ "${1:-}" = "--test" ]; then
  PACKAGES=(slurmctld slurmd slurm-client munge)
fi
EXTRA_SOURCES=/etc/apt/sources.list.d/speaker-neurons-contrib.sources

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all ${#PACKAGES[@]} present"
  exit 0
fi

# Debian's contrib/non-free components (MBROLA voices, pico, some festival voices) come from a
# sources file of our own, derived from the stock one; the stock file is never edited.
enable_cmd="sed -e 's/^Components: .*/Components: contrib non-free/' /etc/apt/sources.list.d/debian.sources > $EXTRA_SOURCES"
install_cmd="DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"

if [ "$(id -u)" -ne 0 ]; then
  echo "Missing Debian packages: ${missing[*]}" >&2
  echo "Run these commands as root (or with sudo), then run make again:" >&2
  [ -f "$EXTRA_SOURCES" ] || echo "  $enable_cmd" >&2
  echo "  apt-get update" >&2
  echo "  $install_cmd" >&2
  exit 1
fi

if [ ! -f "$EXTRA_SOURCES" ]; then
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    eval "$enable_cmd"
  else
    echo "No /etc/apt/sources.list.d/debian.sources found: enable Debian's contrib and non-free" >&2
    echo "components for this machine yourself, then run make again." >&2
    exit 1
  fi
fi
echo "installing: ${missing[*]}"
apt-get update -qq
eval "$install_cmd"
