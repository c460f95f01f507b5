#!/usr/bin/env bash
# Builds the images the compose tests run, on a machine that cannot pull from
# a registry; each is built only when missing, except the fleet images, which
# follow the given binary and envbridge/ (Docker's layer cache makes an
# unchanged one a no-op):
#
#   debian:bookworm-slim   a minbase Debian made with mmdebstrap (needs root or sudo)
#   fleet-prometheus:ci    Debian's prometheus package (deploy/Dockerfile.prometheus.ci)
#   fleet:ci               a prebuilt `fleet` binary (deploy/Dockerfile.ci)
#   fleet-envbridge:ci     the same with the env bridge, from PyPI (deploy/Dockerfile.ci)
#
# Usage: scripts/ci-images.sh [FLEET_BINARY]   (or the FLEET_BINARY variable)
# Image names: FLEET_CI_IMAGE, FLEET_ENVBRIDGE_CI_IMAGE, PROMETHEUS_CI_IMAGE.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="${1:-${FLEET_BINARY:-}}"
if [[ -z "$binary" || ! -x "$binary" ]]; then
    echo "usage: $0 FLEET_BINARY (an executable fleet binary built for Debian bookworm)" >&2
    exit 2
fi
fleet_image="${FLEET_CI_IMAGE:-fleet:ci}"
envbridge_image="${FLEET_ENVBRIDGE_CI_IMAGE:-fleet-envbridge:ci}"
prometheus_image="${PROMETHEUS_CI_IMAGE:-fleet-prometheus:ci}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Concurrent runs would build the same images twice.
exec 9>"${TMPDIR:-/tmp}/fleet-ci-images.lock"
flock 9

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if ! have_image debian:bookworm-slim; then
    sudo=()
    if [[ "$(id -u)" != 0 ]]; then sudo=(sudo -n); fi
    echo "building debian:bookworm-slim with mmdebstrap" >&2
    "${sudo[@]}" mmdebstrap --variant=minbase bookworm "$work/base.tar" \
        "deb http://deb.debian.org/debian bookworm main" \
        "deb http://deb.debian.org/debian bookworm-updates main" \
        "deb http://deb.debian.org/debian-security bookworm-security main" </dev/null
    docker import --change 'CMD ["bash"]' "$work/base.tar" debian:bookworm-slim >/dev/null
fi

if ! have_image "$prometheus_image"; then
    echo "building $prometheus_image" >&2
    docker build -q --force-rm -t "$prometheus_image" - <deploy/Dockerfile.prometheus.ci >/dev/null
fi

# Debug info is most of a test build's size and is not needed to run it.
# The bridge's tracked files only: no build or cache directories of a local
# install.
mkdir "$work/context"
cp "$binary" "$work/context/fleet"
strip --strip-debug "$work/context/fleet" 2>/dev/null || true
git ls-files -z envbridge | xargs -0 cp --parents -t "$work/context"
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$work/context/host-ca.crt"

# Builds one target of deploy/Dockerfile.ci as `image`, then removes the
# image that had the name before, if this build replaced it.
build_target() {
    local target="$1" image="$2" previous current
    previous="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
    docker build -q --force-rm --target "$target" -t "$image" -f deploy/Dockerfile.ci "$work/context" >/dev/null
    current="$(docker image inspect -f '{{.Id}}' "$image")"
    if [[ -n "$previous" && "$previous" != "$current" ]]; then
        docker image rm "$previous" >/dev/null 2>&1 || true
    fi
}
build_target fleet "$fleet_image"
build_target envbridge "$envbridge_image"
echo "$fleet_image $envbridge_image $prometheus_image"
