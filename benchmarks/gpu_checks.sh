#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (CI has none; the developers' device tool lends
# one H200 for minutes, so everything is in one prepared script):
#   1. the tests skipped without a GPU (CUDA forward = CPU forward; DDP over NCCL trains),
#   2. the conv-map pass with cuDNN on and as the trunk chooses, training iterations/s on
#      cached maps with torch.profiler over ten of them and the time inside the step, the
#      pyramid's GPU path (conv_map_speed.py, train_speed.py, spp_table_path.py),
#   3. SPP-net against R-CNN mode on the GPU (benchmarks/model_speed.py),
#   4. the quick start trained and evaluated through torchrun with NCCL, one process per GPU
#      (last: ~6 minutes at the H200's measured ~6 iterations/s; the short checks come first).
# The CUDA DDP test computes its own proposals: it needs opencv-contrib's ximgproc, which the
# lent H200 lacks (and its 73 MB wheel does not fit the tool's 64 MiB); there it fails at
# "no usable training image", not in DDP.
# Usage, from the project root, with the project importable (pip install -e . or PYTHONPATH):
#   bash benchmarks/gpu_checks.sh [OUT_DIR]      # logs, metrics and the speed JSON in OUT_DIR
set -uo pipefail
out=${1:-outputs/gpu_checks}
runs=${RUNS:-/tmp/gpu_check_runs}   # hydra run folders (many files) stay out of OUT_DIR
mkdir -p "$out" "$runs"
export PYTHONUNBUFFERED=1
gpus=$(nvidia-smi -L | wc -l)
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
  nproc; } 2>&1 | tee "$out/gpu.txt"

echo "== 1. CUDA tests"
python3 -m pytest -q -rs -p no:cacheprovider \
  tests/test_detector.py::test_cuda_forward_with_inputs_on_the_gpu_matches_cpu \
  tests/test_train.py::test_ddp_on_cuda_trains_both_regimes 2>&1 | tee "$out/pytest_cuda.log"

echo "== 2. the conv-map pass with and without cuDNN; training on cached maps; the pyramid's GPU path"
for c in on auto; do
  python3 benchmarks/conv_map_speed.py --device cuda --images 12 --cudnn $c --out "$out/conv_maps_cudnn_$c.json" | tail -1
done
python3 benchmarks/train_speed.py --name shapes_cuda --iters 120 --profile -- device=cuda > "$out/train_speed.log" 2>&1
grep -E "iterations_per_s|step_s_median|wall_s" "$out/train_speed.log"
cp benchmarks/results/train_speed_shapes_cuda_profile.txt "$out/" 2>/dev/null
python3 benchmarks/spp_table_path.py --device cuda 2>&1 | grep " s, "

echo "== 3. SPP-net vs R-CNN mode on the GPU"
python3 benchmarks/model_speed.py --device cuda --trunks zf5 alexnet vgg16 efficientnet_lite0 \
  --windows 2000 --rcnn-windows 2000 --rcnn-batch 256 --repeats 3 --out "$out/model_speed_cuda.json" 2>&1 | tail -6

echo "== 4. quick start on the GPU through torchrun ($gpus process(es), NCCL)"
t0=$(date +%s)
torchrun --standalone --nproc_per_node="$gpus" scripts/train.py device=cuda hydra.run.dir="$runs/train" \
  > "$out/train.log" 2>&1
echo "train exit $? in $(( $(date +%s) - t0 )) s"
t0=$(date +%s)
torchrun --standalone --nproc_per_node="$gpus" scripts/eval.py checkpoint="$runs/train/checkpoints/best.pt" \
  device=cuda hydra.run.dir="$runs/eval" > "$out/eval.log" 2>&1
echo "eval exit $? in $(( $(date +%s) - t0 )) s"
tr '\r' '\n' < "$out/train.log" | grep -E "training took|mAP|Error|error" | tail -8
tr '\r' '\n' < "$out/eval.log" | grep -E "mAP|s/image|Error|error" | tail -8
cp "$runs/train/metrics.json" "$out/train_metrics.json" 2>/dev/null
cp "$runs/eval/metrics.json" "$out/eval_metrics.json" 2>/dev/null

