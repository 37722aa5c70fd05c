#!/usr/bin/env bash
# The patched runtime built with ggml's Vulkan backend, for tests on Mesa's software Vulkan
# device (lavapipe) on machines without a GPU: a second cached wheel, installed into its own
# folder (default .runtime/vulkan), never into the environment that holds the CPU runtime.
#
#   tools/vulkan_runtime.sh [DIR]        then: SDFP_EDGE_RUNTIME_DIR=DIR GGML_VK_VISIBLE_DEVICES=0 pytest ...
#
# Debian 12's Vulkan headers (1.3.239) are too old for the pinned ggml-vulkan ('LayerSettingEXT'
# is not a member of 'vk'); Debian 13's libvulkan-dev (1.4.309) is downloaded once, unpacked into
# the cache (nothing installed), and given to CMake. docs/gpu-backends.md has the details.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-.runtime/vulkan}
PYTHON=${PYTHON:-.venv/bin/python}
CACHE=${SDFP_EDGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sdfp-edge}
HEADERS_VERSION=1.4.309.0-1
HEADERS_SHA256=8d329d465e16168afff58b1bd0dd6db46aac2cc3f56054a481b25a04e90b345a
HEADERS=$CACHE/vulkan-headers/$HEADERS_VERSION

as_root=""; [ "$(id -u)" -eq 0 ] || as_root="sudo"
need=()
for p in mesa-vulkan-drivers libvulkan-dev glslc spirv-headers glslang-tools; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "== apt packages: ${need[*]}" >&2
    $as_root apt-get update -qq && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -f "$HEADERS/usr/include/vulkan/vulkan.hpp" ]; then
    echo "== Vulkan headers $HEADERS_VERSION (Debian 13's libvulkan-dev, unpacked into the cache)" >&2
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/parts" "$tmp/cache/archives/partial" "$tmp/deb"
    echo 'deb http://deb.debian.org/debian trixie main' >"$tmp/sources.list"
    o=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=$tmp/parts"
       -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "APT::Sandbox::User=root")
    apt-get "${o[@]}" update -qq
    (cd "$tmp/deb" && apt-get "${o[@]}" download "libvulkan-dev=$HEADERS_VERSION" >/dev/null)
    deb=$(ls "$tmp"/deb/libvulkan-dev_*.deb)
    echo "$HEADERS_SHA256  $deb" | sha256sum -c --quiet
    dpkg -x "$deb" "$tmp/root"
    mkdir -p "$(dirname "$HEADERS")"
    rm -rf "$HEADERS"
    mv "$tmp/root" "$HEADERS"
fi

inc=$HEADERS/usr/include
export CMAKE_ARGS="-DGGML_VULKAN=on -DVulkan_INCLUDE_DIR=$inc -DCMAKE_CXX_FLAGS='-I$inc -mno-amx-tile -mno-amx-int8 -mno-amx-bf16'"
"$PYTHON" tools/build_runtime.py --target "$TARGET"
