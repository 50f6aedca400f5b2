#!/usr/bin/env bash
# Installs what shoal needs from Debian's packages (idempotent; as root or with sudo).
# SHOAL_NO_INSTALL=1 skips installing (machines without a package registry).
set -euo pipefail
PACKAGES=(build-essential cmake pkg-config libboost-dev libboost-program-options-dev libmsgpack-cxx-dev python3-msgpack
          libtorch-dev python3-torch python3-torchvision python3.11-dev python3-numpy
          python3-pytest catch2 libspdlog-dev patchelf systemd dpkg-dev libseccomp-dev
          pandoc man-db prometheus nlohmann-json3-dev)
# pandoc renders the manual pages (docs/man); man-db reads them. prometheus: test_metrics.py
# scrapes shoald with a real Prometheus it starts on loopback (the package's own service is
# not needed: where apt starts it, on a host with systemd, `systemctl disable --now
# prometheus` stops it).
[ "${SHOAL_NO_INSTALL:-0}" = "1" ] && exit 0
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && { echo "setup: all packages present"; exit 0; }
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
