#!/usr/bin/env bash
# The main job: checks every available backend against the fp32 reference and, on a GPU, prints timings.
source "$(dirname "$0")/env.sh"
exec "$VK_PYTHON" -m vibe_kernels.layernorm "$@"
