#!/usr/bin/env bash
# A container engine and the Lambda base image `sam local` needs, offline if need be.
#
#   local/sam_image.sh          make sure both are there (idempotent: a second run takes a second)
#   local/sam_image.sh --check  exit 0 if both are there, else print why not and exit 1 (changes nothing)
#
# Engine: a running Docker is used as it is. Else, as root on Debian, Debian's docker.io is installed
# (apt-get) and dockerd started with its defaults (log: /var/log/dockerd-sam-local.log). Elsewhere, start your
# own Docker first.
#
# Image: SAM runs python3.13 functions on public.ecr.aws/lambda/python:3.13-<arch> and builds its own
# image on top of it (the Runtime Interface Emulator and the layer). If that image is present it is used;
# else, with SAM_LOCAL_PULL_IMAGE=1, it is pulled; else (or if that fails) a stand-in is built and given that name: a Debian trixie
# root file system (debootstrap; its python3 is CPython 3.13), awslambdaric (Lambda's Python runtime
# interface client, the same code as the official image's /var/runtime) and boto3 in /var/runtime, and a
# /var/runtime/bootstrap that starts it. The stand-in is labelled token-vending.stand-in=<this script's digest>; it
# stays in the engine's image store, so it is built once per machine (about 80 s), and again when this script
# changes (a stand-in built by another version is replaced).
set -euo pipefail

ARCH=$(uname -m)
case "$ARCH" in
  x86_64|amd64) ARCH=x86_64; DEB_ARCH=amd64; WHEEL_PLATFORM=manylinux2014_x86_64 ;;
  aarch64|arm64) ARCH=arm64; DEB_ARCH=arm64; WHEEL_PLATFORM=manylinux2014_aarch64 ;;
  *) echo "sam_image: unsupported architecture $ARCH" >&2; exit 1 ;;
esac
IMAGE=${SAM_LOCAL_BASE_IMAGE:-public.ecr.aws/lambda/python:3.13-$ARCH}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
RUNTIME_PACKAGES=(awslambdaric==4.2.2 boto3==1.44.5)
PIP_PYTHON=${PIP_PYTHON:-$( (PYENV_VERSION=3.13.0 pyenv which python3.13 2>/dev/null) || command -v python3.13 || command -v python3)}
DOCKER=${DOCKER:-docker}
RECIPE=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)

engine_up() { "$DOCKER" info >/dev/null 2>&1; }
# The official image (no stand-in label), or a stand-in built by this version of the script.
image_present() {
  local label
  label=$("$DOCKER" image inspect --format '{{index .Config.Labels "token-vending.stand-in"}}' "$IMAGE" 2>/dev/null) \
    || return 1
  [[ -z "$label" || "$label" == "<no value>" || "$label" == "$RECIPE" ]]
}
# apt-get install, tried three times: a fresh machine's first `apt-get update` may meet a mirror mid-sync, and
# unattended upgrades may hold the dpkg lock for a while.
apt_install() {
  local attempt
  for attempt in 1 2 3; do
    if apt-get -o Acquire::Retries=3 -o DPkg::Lock::Timeout=300 update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=3 -o DPkg::Lock::Timeout=300 \
        install -y -qq "$@" >/dev/null; then
      return 0
    fi
    echo "sam_image: apt-get install $* failed (attempt $attempt of 3)" >&2
    [[ $attempt -lt 3 ]] && sleep 15
  done
  return 1
}

if [[ "${1:-}" == "--check" ]]; then
  if ! command -v "$DOCKER" >/dev/null 2>&1; then echo "no docker command"; exit 1; fi
  if ! engine_up; then echo "no container engine is running"; exit 1; fi
  if ! image_present; then echo "image $IMAGE is missing or a stand-in of another version (run local/sam_image.sh)"; exit 1; fi
  exit 0
fi

# --- the engine ------------------------------------------------------------------------------------------
if ! engine_up; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "sam_image: no container engine is running; start Docker (or run this as root on Debian)" >&2
    exit 1
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || { echo "sam_image: no dockerd and no apt-get" >&2; exit 1; }
    echo "sam_image: installing Debian's docker.io" >&2
    apt_install docker.io || { echo "sam_image: could not install docker.io" >&2; exit 1; }
  fi
  if ! engine_up; then
    echo "sam_image: starting dockerd" >&2
    # Its own session: a Ctrl-C that stops `make test` does not reach it (dockerd stops on SIGINT).
    setsid nohup dockerd >>/var/log/dockerd-sam-local.log 2>&1 </dev/null &
    for _ in $(seq 120); do engine_up && break; sleep 1; done
    engine_up || { echo "sam_image: dockerd did not start (see /var/log/dockerd-sam-local.log)" >&2; exit 1; }
  fi
fi

# --- the image -------------------------------------------------------------------------------------------
if image_present; then exit 0; fi
# Pulling reaches a public registry: only when asked (SAM_LOCAL_PULL_IMAGE=1), never by default.
if [[ "${SAM_LOCAL_PULL_IMAGE:-0}" == 1 ]] && timeout 120 "$DOCKER" pull -q "$IMAGE" >/dev/null 2>&1; then exit 0; fi
echo "sam_image: $IMAGE is not here; building a stand-in" >&2

if ! command -v debootstrap >/dev/null 2>&1; then
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 || {
    echo "sam_image: debootstrap is needed (apt-get install debootstrap, as root)" >&2; exit 1; }
  apt_install debootstrap || { echo "sam_image: could not install debootstrap" >&2; exit 1; }
fi
[[ $(id -u) -eq 0 ]] || { echo "sam_image: building the stand-in needs root (debootstrap)" >&2; exit 1; }

WORK=$(mktemp -d)
# --one-file-system: never into a /proc or /dev a failed debootstrap left mounted in the root file system.
trap 'rm -rf --one-file-system "$WORK"' EXIT
ROOTFS=$WORK/rootfs
OLD_IMAGE=$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
for attempt in 1 2; do  # a mirror mid-sync fails a download now and then
  if debootstrap --variant=minbase --arch="$DEB_ARCH" --include=python3,ca-certificates trixie "$ROOTFS" \
      "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    break
  fi
  tail -20 "$WORK/debootstrap.log" >&2
  [[ $attempt -lt 2 ]] || exit 1
  echo "sam_image: debootstrap failed; trying again" >&2
  rm -rf --one-file-system "$ROOTFS"
  sleep 15
done
PYTHON_VERSION=$(chroot "$ROOTFS" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ "$PYTHON_VERSION" == "3.13" ]] || { echo "sam_image: trixie's python3 is $PYTHON_VERSION, not 3.13" >&2; exit 1; }

# The runtime interface client and boto3 as wheels for the image's platform (the host's pip only downloads).
mkdir -p "$ROOTFS/var/runtime" "$ROOTFS/var/task" "$ROOTFS/opt"
"$PIP_PYTHON" -m pip install --quiet --disable-pip-version-check --no-compile --target "$ROOTFS/var/runtime" \
  --platform "$WHEEL_PLATFORM" --implementation cp --python-version 3.13 --only-binary=:all: \
  "${RUNTIME_PACKAGES[@]}"
cat >"$ROOTFS/var/runtime/bootstrap" <<'EOF'
#!/bin/sh
# Lambda's Python runtime as the official image starts it: the handler from _HANDLER (the emulator sets it
# from AWS_LAMBDA_FUNCTION_HANDLER), the function's code, then the layers, then the runtime on sys.path.
export PYTHONPATH="/var/task:/opt/python/lib/python3.13/site-packages:/opt/python:/var/runtime${PYTHONPATH:+:$PYTHONPATH}"
cd "${LAMBDA_TASK_ROOT:-/var/task}"
exec /usr/bin/python3 -m awslambdaric "${_HANDLER:-$AWS_LAMBDA_FUNCTION_HANDLER}"
EOF
chmod 0755 "$ROOTFS/var/runtime/bootstrap"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/usr/share/doc/* \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*

tar -C "$ROOTFS" --numeric-owner -c . | "$DOCKER" import \
  --change 'ENV LANG=C.UTF-8 TZ=:/etc/localtime PATH=/usr/local/bin:/usr/bin:/bin LAMBDA_TASK_ROOT=/var/task LAMBDA_RUNTIME_DIR=/var/runtime' \
  --change 'WORKDIR /var/task' \
  --change "LABEL token-vending.stand-in=$RECIPE" \
  --change 'ENTRYPOINT ["/var/runtime/bootstrap"]' \
  - "$IMAGE" >/dev/null
# The stand-in this one replaces, unless SAM's images still build on it.
[[ -z "$OLD_IMAGE" ]] || "$DOCKER" rmi "$OLD_IMAGE" >/dev/null 2>&1 || true
echo "sam_image: built $IMAGE (stand-in)" >&2
