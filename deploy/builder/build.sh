#!/usr/bin/env bash
# Build the default builder image on this machine without pulling anything:
#   1. a Debian rootfs from Debian's packages (mmdebstrap, ~30 s), imported with `docker import`
#      (skipped when the base image is there already; --rebuild forces it);
#   2. `docker build` of deploy/builder/Dockerfile on top (seconds; run it again after changing the agent).
# Env: KATKIT_BASE_IMAGE (katkit-base:bookworm), KATKIT_BUILDER_IMAGE (katkit-builder:latest),
#      KATKIT_DEBIAN_MIRROR (http://deb.debian.org/debian), KATKIT_DEBIAN_SUITE (bookworm).
set -euo pipefail
cd "$(dirname "$0")/../.."
base=${KATKIT_BASE_IMAGE:-katkit-base:bookworm}
image=${KATKIT_BUILDER_IMAGE:-katkit-builder:latest}
suite=${KATKIT_DEBIAN_SUITE:-bookworm}
mirror=${KATKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ "${1:-}" = "--rebuild" ] || ! docker image inspect "$base" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || { echo "build.sh: mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 2; }
  echo "build.sh: making $base from Debian $suite packages ..." >&2
  mmdebstrap --quiet --variant=minbase --include=git,ca-certificates,python3,docker.io \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$suite" - "$mirror" | docker import --change 'CMD ["bash"]' - "$base" >/dev/null
fi
DOCKER_BUILDKIT=0 docker build --quiet --network none --build-arg "BASE=$base" -t "$image" -f deploy/builder/Dockerfile . >/dev/null
echo "build.sh: $image is ready (base $base)" >&2
