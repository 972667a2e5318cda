#!/usr/bin/env bash
# Downloads, where pip reaches PyPI, the wheels benchmarks/gpu_check.sh needs on a GPU machine without a package index
# (Python 3.12, manylinux x86-64, torch / transformers / numpy / numba / triton already there): TRL 1.16 and what it
# and gold import that those machines lack. Carry DIR (≈ 60 MB; pyarrow is most of it) and pass --wheels DIR.
#   benchmarks/gpu_wheels.sh DIR
set -euo pipefail
out=${1:?usage: gpu_wheels.sh DIR}
mkdir -p "$out"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$out" \
  trl==1.16.0 rapidfuzz==3.14.6 datasets==5.2.0 accelerate==1.15.0 pyarrow==26.0.1 dill==0.4.1 \
  multiprocess==0.70.19 xxhash==4.1.0 tensorboardX==2.6.5 pyyaml==6.0.4 tqdm==4.70.1
ls -la "$out"
