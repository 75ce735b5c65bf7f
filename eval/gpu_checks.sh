#!/usr/bin/env bash
# The GPU checks, as one short script for a lent GPU machine (about 5 minutes of an H100's time, compiling included):
#   1. issue 7's figure: bench_pretrain.py on CUDA, ResNet18 cifar stem, batch 1024, bf16, channels_last, eager and
#      compiled (views/s and the implied seconds per CIFAR-10 epoch);
#   2. the augmentation op by op on CUDA (profile_augment.py), sslkit's crop and colour distortion beside Kornia's;
#   3. the step phase by phase on CUDA (step_phases.py, which synchronises at each phase).
# Each writes its results file and its printed log to $OUT (default eval/results/gpu/).
#
# The device machines' image has torch, torchvision, timm, rich, scipy, PyYAML and safetensors, but not Kornia:
# carry its wheels. Once, here, in the repository's root (the folder is ignored through .git/info/exclude):
#   echo /.whl/ >> .git/info/exclude
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl kornia==0.9.0 kornia_rs==0.2.0
# Then, with the device tool: run(command="bash eval/gpu_checks.sh", carry=[".whl"], timeout_s=540).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-eval/results/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_checks: installing the carried wheels failed"; exit 2; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
python3 -c "import kornia, timm, torch; assert torch.cuda.is_available(), 'no CUDA device'" \
  || { echo "gpu_checks: kornia, timm or a CUDA device is missing (carry .whl, see the header)"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1

status=0
run() {  # run NAME SECONDS COMMAND...: the command's output to the screen and to $OUT/NAME.log
  local name=$1 seconds=$2
  shift 2
  echo "== $name: $*"
  timeout "$seconds" "$@" 2>&1 | tee "$OUT/$name.log" || { echo "gpu_checks: $name failed or ran out of time"; status=1; }
}
common=(--device cuda --batch 1024 --stem cifar --steps 10 --repeats 5 --precision bf16 --no-baseline)
run bench_pretrain_cuda 150 python3 eval/bench_pretrain.py "${common[@]}" --out "$OUT/bench_pretrain_cuda.md"
run bench_pretrain_cuda_compile 240 python3 eval/bench_pretrain.py "${common[@]}" --compile \
  --out "$OUT/bench_pretrain_cuda_compile.md"
run profile_augment_cuda 60 python3 eval/profile_augment.py --device cuda --batch 2048 --size 32 --channels 3
run step_phases_cuda 90 python3 eval/step_phases.py --device cuda --batch 1024 --precision bf16
exit $status
