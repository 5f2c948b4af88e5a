#!/usr/bin/env bash
# Installs the Debian 12 packages weft builds, tests and runs its examples with.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  g++ meson ninja-build pkg-config \
  libtomlplusplus-dev libspdlog-dev libboost-dev libboost-filesystem-dev libcli11-dev nlohmann-json3-dev \
  libopenblas-dev libpcre2-dev libutf8proc-dev libgtest-dev libopenmpi-dev openmpi-bin \
  python3 python3-torch python3-numpy libjemalloc2 \
  fortunes librsvg2-bin >/dev/null
