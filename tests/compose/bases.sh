#!/usr/bin/env bash
# The base images that the Dockerfile and docker-compose.yml name, for `make test-compose`: the official
# ones where a registry answers (or they are here already), else stand-ins built from standins/Dockerfile
# on a debootstrapped Debian bookworm and tagged with the official names. Stand-ins check our Dockerfile
# and compose file, not the official images.
#
#   bases.sh DIR [WHEELS_URL]   DIR: a scratch folder; WHEELS_URL: where the host serves torch's wheel
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
DOCKER=${DOCKER:-/usr/bin/docker}
dir=${1:?usage: bases.sh DIR [WHEELS_URL]}
wheels_url=${2:-}
LABEL=org.kernel-lab.standin
BOOKWORM=klab-standin/bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_CA=${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}

# Every external image: FROM lines that name no stage of the Dockerfile, and compose's image: lines
# other than the images it builds.
base_images() {
  awk 'toupper($1) == "FROM" {
         image = ""; for (i = 2; i <= NF; i++) if ($i !~ /^--/) { image = $i; break }
         if (!(image in stage)) print image
         if (toupper($(NF - 1)) == "AS") stage[$NF] = 1
       }' "$root/Dockerfile"
  awk '$1 == "image:" && $2 !~ /^kernel-lab:/ {print $2}' "$root/docker-compose.yml"
}

# The stand-in target for an image: its repository's last part (python, pytorch, flower, redis, postgres).
standin_target() { local repo=${1%%:*}; echo "${repo##*/}"; }

# Here and not a stand-in, or pulled now (which also replaces a stand-in of an earlier run).
official() {
  local image=$1
  if "$DOCKER" image inspect "$image" >/dev/null 2>&1 \
     && [ -z "$("$DOCKER" image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$image")" ]; then
    return 0
  fi
  timeout 900 "$DOCKER" pull -q "$image" >/dev/null 2>&1
}

bookworm() {
  "$DOCKER" image inspect "$BOOKWORM" >/dev/null 2>&1 && return
  command -v debootstrap >/dev/null || { echo "bases: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
  local rootfs="$dir/rootfs"
  rm -rf "$rootfs"
  echo "bases: debootstrap bookworm from $MIRROR"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$MIRROR" > "$dir/debootstrap.log" 2>&1 \
    || { tail -n 20 "$dir/debootstrap.log" >&2; exit 1; }
  # As Debian's own images: services are not started by package scripts, no package caches.
  printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
  chmod +x "$rootfs/usr/sbin/policy-rc.d"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "$DOCKER" import -c 'CMD ["bash"]' - "$BOOKWORM" >/dev/null
  rm -rf "$rootfs"
}

standin() {
  local image=$1 target context="$dir/standins"
  target=$(standin_target "$image")
  grep -qi "^FROM .* AS $target\$" "$here/standins/Dockerfile" \
    || { echo "bases: no registry answers and there is no stand-in for $image" >&2; exit 1; }
  bookworm
  rm -rf "$context"
  cp -r "$here/standins" "$context"
  cp "$HOST_CA" "$context/host-ca.crt"
  echo "bases: building a stand-in for $image"
  DOCKER_BUILDKIT=1 "$DOCKER" build -q --target "$target" --label "$LABEL=$target" \
    --build-arg "WHEELS_URL=$wheels_url" --build-arg "TORCH_VERSION=$(echo "${image#*:}" | cut -d- -f1)" \
    -t "$image" "$context" > "$dir/standin-$target.log" 2>&1 \
    || { tail -n 30 "$dir/standin-$target.log" >&2; exit 1; }
}

mkdir -p "$dir"
for image in $(base_images | sort -u); do
  if official "$image"; then
    echo "bases: $image (official)"
  else
    standin "$image"
  fi
done
