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

# PostgreSQL for the PostgreSQL run history tests: the distribution's cluster, with a superuser role for the
# user running the tests (tests connect over the local socket: postgresql:///postgres).
PG_VERSION="${RUNDOCK_PG_VERSION:-15}"
PG_CLUSTER="${RUNDOCK_PG_CLUSTER:-main}"
PG_ROLE="$(id -un)"
if ! command -v pg_ctlcluster >/dev/null || [ ! -x "/usr/lib/postgresql/$PG_VERSION/bin/postgres" ]; then
  echo "[services] installing postgresql"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ! pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1 == v && $2 == c {found=1} END {exit !found}'; then
  echo "[services] creating the PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"
  pg_createcluster "$PG_VERSION" "$PG_CLUSTER" >/dev/null
fi
if ! pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" status >/dev/null 2>&1; then
  echo "[services] starting PostgreSQL $PG_VERSION/$PG_CLUSTER"
  pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
fi
PG_PORT="$(pg_conftool -s "$PG_VERSION" "$PG_CLUSTER" show port 2>/dev/null || echo 5432)"
for _ in $(seq 1 30); do pg_isready -q -p "$PG_PORT" && break; sleep 1; done
pg_isready -q -p "$PG_PORT" || { echo "PostgreSQL $PG_VERSION/$PG_CLUSTER did not start:"; pg_lsclusters; exit 1; }
as_postgres() { su postgres -s /bin/sh -c "$1"; }
if [ "$(as_postgres "psql -p $PG_PORT -tAc \"SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE'\"")" != 1 ]; then
  echo "[services] creating the PostgreSQL superuser role $PG_ROLE"
  as_postgres "createuser -p $PG_PORT --superuser '$PG_ROLE'"
fi
echo "[services] postgresql $(psql -p "$PG_PORT" -d postgres -tAc 'SHOW server_version'), role $PG_ROLE"

# Headless Chromium for the UI tests: Debian's build (Playwright's own browser
# download is not reachable); the playwright Python package is a test extra.
if ! command -v chromium >/dev/null; then
  echo "[services] installing chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
echo "[services] $(chromium --version 2>/dev/null | head -1)"
