#!/usr/bin/env bash
# maas-base:bookworm, the serving image's base, made from Debian packages alone (no registry):
# Python 3.11 with venv and a headless Java 17 runtime for TorchServe's frontend, nothing else
# (no compilers, docs, man pages, locales or apt lists). Needs root, mmdebstrap and a Docker daemon.
#
#   deploy/docker/base.sh [TAG]        # default maas-base:bookworm
#
# Rebuilt only when this script changes: the image carries the script's hash as a label.
set -euo pipefail
tag="${1:-maas-base:bookworm}"
here="$(cd "$(dirname "$0")" && pwd)"
recipe="$(sha256sum "$0" | cut -c1-16)"
if [ "$(docker image inspect -f '{{index .Config.Labels "maas.recipe"}}' "$tag" 2>/dev/null)" = "$recipe" ]; then
    echo "$tag is up to date (recipe $recipe)"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "building $tag from Debian bookworm packages (about a minute)"
# Java's post-install links its man page into man1; keep the folder though man pages are left out.
mmdebstrap --quiet --variant=minbase --aptopt='APT::Install-Recommends "false"' \
    --include=python3,python3-venv,openjdk-17-jre-headless,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --essential-hook='mkdir -p "$1/usr/share/man/man1"' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
    bookworm "$work/rootfs.tar"
docker import --change "LABEL maas.recipe=$recipe" --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/sh"]' "$work/rootfs.tar" "$tag" >/dev/null
echo "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
