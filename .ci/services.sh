#!/usr/bin/env bash
# Installs and starts the real services the tests use: a Docker engine with a
# local base image (no registry is reachable, so it is made with debootstrap
# and `docker import`). Idempotent: what is already there is reused.
set -euo pipefail

BASE_IMAGE="${RUNDOCK_TEST_BASE_IMAGE:-rundock-test-base:3}"
ROOTFS="${RUNDOCK_ROOTFS:-/var/tmp/rundock-rootfs}"

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "[services] installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "[services] starting dockerd"
  nohup dockerd >/var/log/rundock-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -20 /var/log/rundock-dockerd.log; exit 1; }
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "[services] building $BASE_IMAGE with debootstrap"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,openssh-server bookworm "$ROOTFS" http://deb.debian.org/debian \
    >/var/log/rundock-debootstrap.log 2>&1 || { tail -20 /var/log/rundock-debootstrap.log; exit 1; }
  rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED  # the image is a throwaway test base: let pip install
  tar -C "$ROOTFS" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$ROOTFS"
fi
echo "[services] docker $(docker version --format '{{.Server.Version}}'), base image $BASE_IMAGE"
