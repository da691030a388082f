#!/usr/bin/env bash
# Installs qforge's build dependencies from Debian packages. Idempotent: packages already
# present are skipped, so on a prepared machine this does nothing and needs no network.
set -euo pipefail
# gnuplot-nox: `qforge table --plot` (its pngcairo terminal); the build itself does not need it.
pkgs=(cmake g++ make pkg-config liblua5.4-dev libeigen3-dev doctest-dev nlohmann-json3-dev gnuplot-nox)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all dependencies present (${pkgs[*]})" >&2
  exit 0
fi
echo "setup: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y --no-install-recommends "${missing[@]}" || {
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${missing[@]}"
}
