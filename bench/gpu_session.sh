#!/usr/bin/env bash
# Device calls of the GPU work, each inside the 10-minute command limit, on a 2-GPU machine
# (device kind nvidia-h100-x2). Run from the repo root carrying .gpu (reid_vtest splits) and .whl:
#
#   bash bench/gpu_session.sh speed-and-train   # GPU 0: ReIDMamba-S vs ViT-B table; GPU 1: shipped-weights runs
#   bash bench/gpu_session.sh ddp               # torchrun on 1 and 2 GPUs, same global batch (issue 7)
#   bash bench/gpu_session.sh one-gpu-and-profile  # GPU 0: the 1-GPU run of ddp, to the end; GPU 1: profile, speed row
#   bash bench/gpu_session.sh profile           # GPU 0: kernel profile; GPU 1: the speed table, autotuned
#   bash bench/gpu_session.sh pipeline          # GPU 0: reidcam run on 1, 4, 16 cameras of 1080p; GPU 1: profile
#   bash bench/gpu_session.sh measure-all       # GPU 0: speed table; GPU 1: profile, embedder, pipeline
#   bash bench/gpu_session.sh detector-and-pipeline  # GPU 0: the detector's parts, then the pipeline
#   bash bench/gpu_session.sh table-and-pipeline    # GPU 0: speed table (both forward scans); GPU 1: checks,
#                                                   # the CUDA scan's tests, the profile, the pipeline
#   bash bench/gpu_session.sh variants-and-profile  # GPU 0: the CUDA scan's builds timed; GPU 1: the profile
#   bash bench/gpu_session.sh ncu-and-row       # GPU 0: the 256x128 s16 row, then Nsight Compute on the scan
#   bash bench/gpu_session.sh scan-ab           # GPU 0: this scan_fwd.cu against a carried .gpu/scan_fwd_*.cu
#   bash bench/gpu_session.sh row               # GPU 0: the 256x128 s16 row alone
#   bash bench/gpu_session.sh switch-interval-ab    # GPU 0: 16 cameras at GIL switch intervals 5, 1, 0.5 ms
#   bash bench/gpu_session.sh conv-and-decode   # GPU 0: CUDA conv + scan tests, checks, the 256x128 s16 row;
#                                               # GPU 1: 16 cameras decoded in threads, then in processes
#   bash bench/gpu_session.sh table-and-upload  # GPU 0: the speed table at every size; GPU 1: the upload
#                                               # test, 16 cameras in threads and processes, 1 and 4 in processes
#   bash bench/gpu_session.sh pipeline-profile  # GPU 0: 16 cameras under py-spy (carry .gpu/py_spy-*.whl)
#   bash bench/gpu_session.sh detector-graphs   # GPU 0: the detector's GPU tests, then 16 cameras with the
#                                               # detector's network as CUDA graphs and without
#   bash bench/gpu_session.sh ahead-ab          # GPU 0: the detector's GPU tests, then 16 cameras with the
#                                               # reidcam package carried in .gpu/before and with this one
#                                               # (detection a step ahead), overlap off and on; 4 cameras
#   TESTS=... PROFILE=1 bash bench/gpu_session.sh ab  # the same A/B without the overlap and 4-camera runs,
#                                               # then (PROFILE=1) this package's run under py-spy
#   bash bench/gpu_session.sh scan-bwd          # GPU 0: the CUDA backward scan's GPU tests, the checks and
#                                               # kernel A/B, then the 256x128 s16 row with REIDCAM_SCAN_BWD=cuda
#   bash bench/gpu_session.sh graphs-and-row    # GPU 0: detector-graphs; GPU 1: the CUDA kernels' tests, the
#                                               # backend checks and the 256x128 s16 row
#   bash bench/gpu_session.sh bwd-profile       # GPU 0: the CUDA backward scan's tests, then the kernel profile
#   bash bench/gpu_session.sh train-graphs      # GPU 0: the training step as a CUDA graph: tests, row, trainer
#   bash bench/gpu_session.sh bwd-and-pipeline  # GPU 0: backward designs timed, detector graph tests, pipeline 1/4/16
#   bash bench/gpu_session.sh kernel-variants   # GPU 0: backward designs (3: 80 registers), the forward's split
#                                               # kernels, the add + norm backward's blockings, the 256x128 row
#   bash bench/gpu_session.sh kernel-tests      # GPU 0: the CUDA kernels' GPU tests (fp16 too), the graphed step's,
#                                               # then the trainer in fp16 and bf16 with graphs
#   bash bench/gpu_session.sh bwd-variants      # GPU 0: the CUDA backward scan's compile-time variants and
#                                               # Triton's backward timed on the same inputs (batch 64, 256)
#   bash bench/gpu_session.sh glue-tests        # GPU 0: the conv backward's, graphed step's and scans' GPU tests,
#                                               # each file in a process of its own, in parallel
#   bash bench/gpu_session.sh pass2-ab          # GPU 0: backward design 3 against an earlier source, the row
#                                               # before/after alternated, the backward's and Triton's GPU tests
#   ROW_PACKAGES="dir ..." bash bench/gpu_session.sh rows-profile-tests  # GPU 0: the row of each carried
#                                               # package and of this tree, the step's profile, glue-tests' files
#   bash bench/gpu_session.sh ncu-step-and-trainer  # GPU 0: Nsight Compute on the step's scan kernels at batch 64,
#                                               # then the trainer with graphs in bf16 and fp16
#   bash bench/gpu_session.sh ncu-scans-and-gemms  # GPU 0: Nsight Compute on the step's backward and the split
#                                               # forward, then bench/mixer_gemms.py
#   bash bench/gpu_session.sh ncu-source        # GPU 0: Nsight Compute's SASS source view of the split forward
#                                               # and the backward scan, with stall samples per instruction
#   bash bench/gpu_session.sh glue-ab           # GPU 0: the 256x128 row, .gpu/before's package against this one
#                                               # (alternated), the kernels' GPU tests, the kernel cache cold and
#                                               # warm, 4 cameras at tracker.processes 0 and 1, the step's profile
#
# The pipeline and measure-all phases carry .whl and .gpu/shared: a copy of ../shared/data/vtest.avi and
# models/yolov8n-from-tflite.pt (made here by bench/detector_from_tflite.py: the device has no LiteRT).
#
# Everything that comes back is written under $OUT (logs, speed.md, train_*.json, weights), and
# Triton's compiled kernels as $OUT/triton_cache.tgz: copy that to .gpu/ and the next call skips the
# 2-4 minutes of first-use compilation (the cache is read from .gpu/triton_cache.tgz when present).
set -u
phase=${1:?usage: gpu_session.sh detector-graphs|pipeline-profile|table-and-upload|conv-and-decode|switch-interval-ab|row|scan-ab|ncu-and-row|variants-and-profile|table-and-pipeline|measure-all|detector-and-pipeline|speed-and-train|ddp|one-gpu-and-profile|profile|pipeline}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ "$phase" = pipeline ] || [ "$phase" = measure-all ] || [ "$phase" = detector-and-pipeline ] || [ "$phase" = table-and-pipeline ] || [ "$phase" = switch-interval-ab ] || [ "$phase" = conv-and-decode ] || [ "$phase" = table-and-upload ] || [ "$phase" = pipeline-profile ] || [ "$phase" = detector-graphs ] || [ "$phase" = graphs-and-row ] || [ "$phase" = ahead-ab ] || [ "$phase" = ab ] || [ "$phase" = bwd-and-pipeline ] || [ "$phase" = glue-ab ]; then
  wheels=(.whl/*.whl); else
  wheels=(.whl/pydantic*.whl .whl/annotated_types*.whl .whl/typing_inspection*.whl); fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "${wheels[@]}" 2>&1 | tail -2
export PYTHONPATH=.:/tmp/site
export TRITON_CACHE_DIR=/tmp/tcache
[ -f .gpu/triton_cache.tgz ] && tar xzf .gpu/triton_cache.tgz -C /tmp
nvidia-smi -L

# One shipped-weights candidate: ReIDMamba-T on a held-out-persons split, camera-look augmentation,
# no camera embedding (the user's cameras are not the training cameras). $1 name, $2 split, rest: overrides.
train_candidate() {
  local name=$1 split=$2; shift 2
  mkdir -p "/tmp/$name"
  TMPDIR="/tmp/$name" REIDCAM_SCAN=triton timeout "${TRAIN_TIMEOUT:-470}" python3 bench/gpu_train.py \
    --epochs "${EPOCHS:-40}" --out "/tmp/$name/out" --data-root "$split" --num-workers 5 --keep-weights \
    model.name=reidmamba_tiny "model.options={sie_lambda: 0.0}" data.dataset=mined \
    train.eval_every=10 train.checkpoint_every=10 "$@" >"/tmp/$name/train.log" 2>&1
}

# $OUT takes 8 files: one log and one JSON of summaries for all candidates, and the weights of the
# candidate with the best final mAP on the held-out persons (float16, no classifiers: ~16 MB).
collect_candidates() {
  python3 - "$@" <<'PY'
import json, os, sys
from pathlib import Path
out = Path(os.environ["OUT"])
summaries, logs = {}, []
for name in sys.argv[1:]:
    run = Path("/tmp") / name
    summary = run / "out" / "gpu_train_summary.json"
    summaries[name] = json.loads(summary.read_text()) if summary.exists() else None
    log = run / "train.log"
    logs.append(f"===== {name}\n" + (log.read_text()[-6000:] if log.exists() else "no log\n"))
(out / "train_candidates.json").write_text(json.dumps(summaries, indent=1))
(out / "train_candidates.log").write_text("\n".join(logs))
scored = {n: s["final_metrics"].get("mAP", -1) for n, s in summaries.items() if s and s.get("final_metrics")}
print("final mAP:", scored)
if scored:
    best = max(scored, key=scored.get)
    from reidcam.reid.model.checkpoint import export_inference_checkpoint
    extra = {"candidate": best, "metrics": summaries[best]["final_metrics"], "overrides": summaries[best]["overrides"]}
    export_inference_checkpoint(Path("/tmp") / best / "out" / "last.pt", out / "reidmamba_candidate.pt", extra=extra)
    print("exported", best, (out / "reidmamba_candidate.pt").stat().st_size / 2**20, "MiB")
PY
}

# GPU 0: the detection and upload tests on the GPU (graph replays against eager runs), then 16 cameras of
# 1080p (decoder processes) with the detector's network as CUDA graphs, then without.
detector_graphs() (
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 YOLO_OFFLINE=1 REIDCAM_SHARED=.gpu/shared TRITON_INTERPRET=0
  detector="$PWD/.gpu/shared/models/yolov8n-from-tflite.pt"
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_detection.py tests/test_upload.py \
    -k "graph or ring or head" >"$OUT/checks.log" 2>&1
  for graphs in --detector-graphs --no-detector-graphs; do
    timeout "${RUN_TIMEOUT:-150}" python3 bench/gpu_pipeline.py --device cuda --cameras "${CAMERAS:-16}" --frames 100 \
      --detector "$detector" --no-overlap --decode process "$graphs" >>"$OUT/pipeline.log" 2>&1
  done
)

case $phase in
detector-graphs)
  detector_graphs
  ;;
ahead-ab|ab)
  # GPU 0: GPU tests ($TESTS: pytest arguments); then 16 cameras of 1080p with the package in .gpu/before
  # (git archive of the commit before) and with this one, twice in alternation (hosts drift), overlap off;
  # ahead-ab also runs this one with overlap on, and 4 cameras; with PROFILE=1, last, this one under py-spy
  # (as pipeline-profile).
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 YOLO_OFFLINE=1 REIDCAM_SHARED=.gpu/shared TRITON_INTERPRET=0
  detector="$PWD/.gpu/shared/models/yolov8n-from-tflite.pt"
  tests=${TESTS:-tests/test_detection.py tests/test_upload.py -k "graph or ring or head or submitted"}
  eval "timeout 120 python3 -m pytest -q -p no:cacheprovider $tests" >"$OUT/checks.log" 2>&1
  pipeline() { timeout "${RUN_TIMEOUT:-150}" python3 bench/gpu_pipeline.py --device cuda --frames 100 \
    --detector "$detector" --decode process "$@" >>"$OUT/pipeline.log" 2>&1; }
  cp -n reidcam/weights/reidmamba_default.pt .gpu/before/reidcam/weights/  # not carried twice
  for round in 1 2; do
    PYTHONPATH=.gpu/before:.:/tmp/site pipeline --cameras 16 --no-overlap
    pipeline --cameras 16 --no-overlap
  done
  if [ "$phase" = ahead-ab ]; then
    pipeline --cameras 16 --overlap
    pipeline --cameras 4 --no-overlap
  fi
  if [ "${PROFILE:-0}" = 1 ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/pyspy .gpu/py_spy-*.whl 2>&1 | tail -1
    timeout -s INT 120 /tmp/pyspy/bin/py-spy record --rate 100 --idle --threads --format raw \
      --output "$OUT/pyspy.txt" -- python3 bench/gpu_pipeline.py --device cuda --cameras 16 --frames 100 \
      --detector "$detector" --no-overlap --decode process >>"$OUT/pipeline.log" 2>&1
    python3 bench/pyspy_summary.py "$OUT/pyspy.txt" >"$OUT/pyspy_summary.txt" 2>&1
  fi
  ;;
scan-bwd)
  # GPU 0: the CUDA backward scan (scan_bwd.cu) against float64 and Triton, then speed_vs_vit's checks and
  # kernel-by-kernel timings (both backward kernels on the same inputs), then the row's training step with
  # the CUDA backward (REIDCAM_SCAN_BWD=cuda) beside ViT-B's.
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_cuda_scan_bwd.py \
    tests/test_kernels_cuda_scan.py >"$OUT/checks.log" 2>&1
  timeout 150 python3 bench/speed_vs_vit.py --quick --backends triton --no-graphs --no-plain-norm \
    --no-triton-fwd >"$OUT/speed.log" 2>&1
  REIDCAM_SCAN_BWD=cuda timeout 120 python3 bench/speed_vs_vit.py --timing-only --quick --backends triton \
    --no-plain-norm --no-triton-fwd --skip-core >"$OUT/speed_cbwd.log" 2>&1
  ;;
bwd-profile)
  # GPU 0: the CUDA backward scan's tests (the offline ptxas-report checks first), then the kernel profile of
  # inference and the training step (bench/profile_model.py, 40 rows a phase).
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_cuda_scan_bwd.py >"$OUT/checks.log" 2>&1
  timeout 300 python3 bench/profile_model.py --out "$OUT" --rows 40 >"$OUT/profile.log" 2>&1
  ;;
train-graphs)
  # GPU 0: the graphed training step's GPU tests, the 256x128 s16 row with training steps eager and as CUDA
  # graphs (both models), then reidcam's trainer (synthetic data, ReIDMamba-S, bf16) without and with graphs.
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_train_graphs.py >"$OUT/checks.log" 2>&1
  timeout 200 python3 bench/speed_vs_vit.py --timing-only --quick --backends triton --no-plain-norm \
    --no-triton-fwd --skip-core >"$OUT/speed.log" 2>&1
  for graphs in false true; do
    timeout 150 python3 bench/gpu_train.py --out "/tmp/train_$graphs" --epochs 2 --num-workers 12 \
      train.eval_every=0 "train.cuda_graphs=$graphs" >"$OUT/train_$graphs.log" 2>&1
    cp -f "/tmp/train_$graphs/gpu_train_summary.json" "$OUT/train_$graphs.json"
  done
  ;;
bwd-and-pipeline)
  # GPU 0: the backward scan's designs timed (bench/cuda_scan_bwd_variants.py), the detector's graph tests, then
  # the pipeline on 1, 4 and 16 cameras filming at once (--clocks together), and 16 with staggered clocks
  # (the bench's only mode before session 8).
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 YOLO_OFFLINE=1 REIDCAM_SHARED=.gpu/shared TRITON_INTERPRET=0
  timeout 150 python3 bench/cuda_scan_bwd_variants.py --batches 64,256 --no-triton >"$OUT/bwd_variants.log" 2>&1
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_detection.py tests/test_upload.py \
    -k "graph or ring or head or submitted or warm" >"$OUT/checks.log" 2>&1
  detector="$PWD/.gpu/shared/models/yolov8n-from-tflite.pt"
  timeout 240 python3 bench/gpu_pipeline.py --device cuda --cameras 1,4,16 --frames 100 --detector "$detector" \
    --no-overlap --decode process >>"$OUT/pipeline.log" 2>&1
  timeout 90 python3 bench/gpu_pipeline.py --device cuda --cameras 16 --frames 100 --detector "$detector" \
    --no-overlap --decode process --clocks staggered --warmup-frames 0 >>"$OUT/pipeline.log" 2>&1
  ;;
kernel-variants)
  # GPU 0: scan_bwd.cu's builds (design 3 among them) at batch 64 and 256, the forward scan split and unsplit at
  # batch 32-256, the fused add + norm's backward blockings, then the 256x128 s16 row (both models, graphs).
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0
  timeout 150 python3 bench/cuda_scan_bwd_variants.py --batches 64,256 --no-triton >"$OUT/bwd_variants.log" 2>&1
  timeout 150 python3 bench/cuda_scan_variants.py --batches 32,64,128,256 --tokens 140 >"$OUT/fwd_variants.log" 2>&1
  timeout 60 python3 bench/add_rmsnorm_variants.py >"$OUT/norm_variants.log" 2>&1
  timeout 200 python3 bench/speed_vs_vit.py --timing-only --quick --backends triton --no-plain-norm \
    --no-triton-fwd --skip-core >"$OUT/speed.log" 2>&1
  ;;
glue-ab)
  # The row twice per package, alternated (hosts vary: only this call's numbers compare), then the GPU tests of
  # what the backward's glue touches (three groups in parallel), the kernels compiled cold and loaded warm from the
  # disk cache in fresh processes, the pipeline on 4 cameras with its trackers in the main thread and in a worker
  # process, and last the bare step's kernel profile.
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0 YOLO_OFFLINE=1 REIDCAM_SHARED=.gpu/shared
  # .gpu/before holds the earlier package and its speed_vs_vit.py (this one's imports are newer)
  row() { timeout 90 python3 "$2" --timing-only --quick --backends triton --no-plain-norm --no-triton-fwd \
    --skip-core >"$OUT/$1.log" 2>&1; }
  for round in 1 2; do
    PYTHONPATH=.gpu/before:/tmp/site row "before$round" .gpu/before/speed_vs_vit.py; row "after$round" bench/speed_vs_vit.py
  done
  echo "== [$(elapsed) s] rows done"
  kernel_tests() { timeout "${TEST_TIMEOUT:-280}" python3 -m pytest -q -p no:cacheprovider -k "not emulated" "$@" 2>&1 \
    | tail -15; }
  kernel_tests tests/test_kernels_cuda_scan_bwd.py >"$OUT/tests_bwd.log" &
  kernel_tests tests/test_kernels_cuda_conv_bwd.py tests/test_train_graphs.py tests/test_kernels_triton.py \
    >"$OUT/tests_conv_graphs_triton.log" &
  kernel_tests tests/test_kernels_cuda_scan.py >"$OUT/tests_fwd.log" &
  wait
  echo "== [$(elapsed) s] tests done"
  for cache in cold warm; do
    REIDCAM_KERNEL_CACHE=/tmp/kcache timeout 60 python3 -c "
import time, torch
from reidcam.reid.model.kernels import cuda_scan
start = time.perf_counter()
device = torch.device('cuda')
cuda_scan.CudaScan().kernels(device, 16); cuda_scan.CudaScanBackward().kernels(device, 16)
cuda_scan.CudaConv().kernels(device); cuda_scan.CudaConvBackward().kernels(device)
print('$cache: the four kernels ready in %.2f s' % (time.perf_counter() - start))" >>"$OUT/kernel_cache.log" 2>&1
  done
  detector="$PWD/.gpu/shared/models/yolov8n-from-tflite.pt"
  for processes in 0 1; do
    timeout 75 python3 bench/gpu_pipeline.py --device cuda --cameras 4 --frames 80 --detector "$detector" \
      --no-overlap --decode process --tracker-processes "$processes" --warmup-frames 10 >>"$OUT/pipeline.log" 2>&1
  done
  echo "== [$(elapsed) s] pipeline done"
  timeout 60 python3 bench/profile_model.py --rows 90 --out "$OUT" >"$OUT/profile.log" 2>&1
  ;;
rows-profile-tests)
  # BWD_VARIANTS=1 / FWD_VARIANTS=1: first the backward / forward scan's builds timed
  # (bench/cuda_scan_bwd_variants.py, cuda_scan_variants.py; EARLIER_BWD=path: with design 3 built from that copy of
  # scan_bwd.cu beside them). The row of each package in ROW_PACKAGES (folders holding reidcam/ and their own
  # speed_vs_vit.py) and of this tree, twice each, alternated, into one log, bench/mixer_gemms.py's table after them,
  # and the bare step's kernel profile with its small kernels by op (NO_PROFILE=1: neither of the two); CHECKS=1: the
  # backends' checks against the reference (speed_vs_vit.py --checks-only, CHECKS_TIMEOUT s: the bf16 builds compile
  # after the fp32 table); then the GPU test files of TEST_FILES (default: glue-tests' four; file:expression selects
  # by pytest -k; none: no tests), each in a process of its own, with the time left.
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0 SKIP_TRITON_CACHE=1
  [ -n "${BWD_VARIANTS:-}" ] && timeout 150 python3 bench/cuda_scan_bwd_variants.py --batches 64,256 --no-triton \
    ${EARLIER_BWD:+--earlier-source "$EARLIER_BWD"} >"$OUT/bwd_variants.log" 2>&1
  [ -n "${FWD_VARIANTS:-}" ] && timeout 120 python3 bench/cuda_scan_variants.py --batches 64,256 --tokens 140 \
    >>"$OUT/bwd_variants.log" 2>&1
  row() { echo "=== $1" >>"$OUT/rows.log"; OUT="" timeout 90 python3 "$2" --timing-only --quick --backends triton \
    --no-plain-norm --no-triton-fwd --skip-core >>"$OUT/rows.log" 2>&1; }
  for round in 1 2; do
    for package in ${ROW_PACKAGES:-}; do PYTHONPATH="$package:/tmp/site" row "$package $round" "$package/speed_vs_vit.py"; done
    row "this tree $round" bench/speed_vs_vit.py
  done
  echo "== [$(elapsed) s] rows done"
  if [ -z "${NO_PROFILE:-}" ]; then
    timeout 60 python3 bench/mixer_gemms.py >>"$OUT/rows.log" 2>&1
    timeout 90 python3 bench/profile_model.py --rows 90 --by-op --out "$OUT" >"$OUT/profile.log" 2>&1
  fi
  echo "== [$(elapsed) s] gemms and profile done"
  [ -n "${CHECKS:-}" ] && timeout "${CHECKS_TIMEOUT:-240}" python3 bench/speed_vs_vit.py --checks-only --backends triton \
    --no-plain-norm >"$OUT/checks.log" 2>&1
  left=$(( ${CALL_LIMIT:-580} - $(elapsed) ))
  for entry in ${TEST_FILES:-test_kernels_cuda_conv_bwd test_train_graphs test_kernels_cuda_scan test_kernels_cuda_scan_bwd}; do
    [ "$entry" = none ] && continue
    file=${entry%%:*} selection=${entry#*:}  # file:expression runs the tests that pytest -k expression selects
    [ "$selection" = "$entry" ] && selection="not emulated"
    timeout "$left" python3 -m pytest -q -p no:cacheprovider -k "$selection" "tests/$file.py" 2>&1 | tail -15 \
      >>"$OUT/tests_$file.log" &
  done
  wait
  ;;
ncu-step-and-trainer)
  # GPU 0: Nsight Compute on the training step's two scan kernels at batch 64 (the split forward and the backward,
  # as bench/profile_model.py's step launches them; stall reasons, issue, pipes), then reidcam's trainer with
  # CUDA graphs in bf16 and fp16 (the README's images/s).
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0 SKIP_TRITON_CACHE=1
  for kernel in bimamba_scan_fwd_split_bf16_c1 bimamba_scan_bwd_bf16; do
    timeout "${NCU_TIMEOUT:-150}" ncu --clock-control none --kernel-name "$kernel" --launch-skip 30 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section ComputeWorkloadAnalysis --section InstructionStats --print-details all \
      python3 bench/profile_model.py --rows 5 --out /tmp/ncu_profile >>"$OUT/ncu_step.txt" 2>&1
  done
  echo "== [$(elapsed) s] ncu done"
  for amp in bf16 fp16; do
    timeout 110 python3 bench/gpu_train.py --out "/tmp/train_$amp" --epochs 2 --num-workers 12 --amp "$amp" \
      train.eval_every=0 train.cuda_graphs=true >"$OUT/train_$amp.log" 2>&1
    cp -f "/tmp/train_$amp/gpu_train_summary.json" "$OUT/train_$amp.json"
  done
  ;;
ncu-scans-and-gemms)
  # GPU 0: Nsight Compute on the step's backward scan (bench/profile_model.py's step) and on the split forward at
  # batch 64 (bench/cuda_scan_variants.py, whose first split launches are c1's: profile_model.py's CudaScan times c1
  # and c2 at first use and under ncu chose c2), then bench/mixer_gemms.py.
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0 SKIP_TRITON_CACHE=1
  sections=(--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats
    --section SchedulerStats --section ComputeWorkloadAnalysis --section InstructionStats --print-details all)
  timeout 150 ncu --clock-control none --kernel-name bimamba_scan_bwd_bf16 --launch-skip 30 --launch-count 1 \
    "${sections[@]}" python3 bench/profile_model.py --rows 5 --out /tmp/ncu_profile >"$OUT/ncu_scans.txt" 2>&1
  timeout 150 ncu --clock-control none --kernel-name bimamba_scan_fwd_split_bf16_c1 --launch-skip 5 \
    --launch-count 1 "${sections[@]}" python3 bench/cuda_scan_variants.py --batches 64 --tokens 140 \
    >>"$OUT/ncu_scans.txt" 2>&1
  timeout 90 python3 bench/mixer_gemms.py >"$OUT/gemms.log" 2>&1
  ;;
ncu-source)
  # GPU 0: Nsight Compute's source view (SASS, with each instruction's warp stall samples) of the split forward c1
  # at batch 64 (bench/cuda_scan_variants.py) and of the training step's backward (bench/profile_model.py), as CSV.
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0 SKIP_TRITON_CACHE=1
  sections=(--section SourceCounters --section WarpStateStats --import-source no)
  timeout 150 ncu --clock-control none --kernel-name bimamba_scan_fwd_split_bf16_c1 --launch-skip 5 --launch-count 1 \
    "${sections[@]}" -o /tmp/fwd python3 bench/cuda_scan_variants.py --batches 64 --tokens 140 >"$OUT/ncu_log.txt" 2>&1
  timeout 150 ncu --clock-control none --kernel-name bimamba_scan_bwd_bf16 --launch-skip 30 --launch-count 1 \
    "${sections[@]}" -o /tmp/bwd python3 bench/profile_model.py --rows 5 --out /tmp/ncu_profile >>"$OUT/ncu_log.txt" 2>&1
  for kernel in fwd bwd; do
    ncu --import "/tmp/$kernel.ncu-rep" --page source --csv --print-source sass >"$OUT/source_$kernel.csv" 2>>"$OUT/ncu_log.txt"
    ncu --import "/tmp/$kernel.ncu-rep" --page details --print-details all >>"$OUT/ncu_log.txt" 2>&1
  done
  ;;
glue-tests)
  # The GPU tests session 10 could not rerun in processes of their own: the conv backward's (dx into a strided
  # half of the packed gradient), the graphed step's and the forward scan's (the packed core), then the backward's.
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0 SKIP_TRITON_CACHE=1
  for file in test_kernels_cuda_conv_bwd test_train_graphs test_kernels_cuda_scan test_kernels_cuda_scan_bwd; do
    timeout 400 python3 -m pytest -q -p no:cacheprovider -k "not emulated" "tests/$file.py" 2>&1 | tail -15 \
      >"$OUT/$file.log" &
  done
  wait
  ;;
pass2-ab)
  # The backward scan's design 3 from this source against .gpu/scan_bwd_before.cu (bench/cuda_scan_bwd_variants.py
  # --earlier-source), the row of .gpu/before's package against this one, alternated, then the backward's GPU tests
  # and the kernel-compile tests on this machine's NVRTC, and the Triton tests without the exported env. Few files
  # come back: the rows go to one log, and so do the tests.
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0 SKIP_TRITON_CACHE=1
  timeout 120 python3 bench/cuda_scan_bwd_variants.py --batches 64,256 --no-triton \
    --earlier-source .gpu/scan_bwd_before.cu >"$OUT/bwd_variants.log" 2>&1
  echo "== [$(elapsed) s] variants done"
  row() { echo "=== $1" >>"$OUT/rows.log"; OUT="" timeout 90 python3 "$2" --timing-only --quick --backends triton \
    --no-plain-norm --no-triton-fwd --skip-core >>"$OUT/rows.log" 2>&1; }
  for round in 1 2; do
    PYTHONPATH=.gpu/before:/tmp/site row "before$round" .gpu/before/speed_vs_vit.py; row "after$round" bench/speed_vs_vit.py
  done
  echo "== [$(elapsed) s] rows done"
  timeout 330 python3 -m pytest -q -p no:cacheprovider -k "not emulated" tests/test_kernels_cuda_scan_bwd.py \
    tests/test_kernels_sass.py 2>&1 | tail -30 >"$OUT/tests_bwd.log" &
  env -u TRITON_INTERPRET -u REIDCAM_SCAN timeout 200 python3 -m pytest -q -p no:cacheprovider \
    tests/test_kernels_triton.py 2>&1 | tail -40 >"$OUT/tests_triton.log" &
  wait
  ;;
kernel-tests)
  # GPU 0: the fused add + norm's backward blockings and the 256x128 s16 row, the CUDA kernels' and the graphed
  # step's GPU tests, then reidcam's trainer with graphs in fp16 (the benchmark recipes' precision) and bf16.
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0
  timeout 60 python3 bench/add_rmsnorm_variants.py >"$OUT/norm_variants.log" 2>&1
  timeout 120 python3 bench/speed_vs_vit.py --timing-only --quick --backends triton --no-plain-norm \
    --no-triton-fwd --skip-core >"$OUT/speed.log" 2>&1
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels_cuda_scan.py \
    tests/test_kernels_cuda_scan_bwd.py tests/test_kernels_cuda_conv.py tests/test_kernels_cuda_conv_bwd.py \
    tests/test_train_graphs.py >"$OUT/checks.log" 2>&1
  for amp in fp16 bf16; do
    timeout 100 python3 bench/gpu_train.py --out "/tmp/train_$amp" --epochs 2 --num-workers 12 --amp "$amp" \
      train.eval_every=0 train.cuda_graphs=true >"$OUT/train_$amp.log" 2>&1
    cp -f "/tmp/train_$amp/gpu_train_summary.json" "$OUT/train_$amp.json"
  done
  ;;
bwd-variants)
  # GPU 0: scan_bwd.cu's builds (block size, register cap, flush) at batch 64 and 256, 140 tokens, each one's
  # gradients against the default build's, and Triton's scan_backward on the same inputs
  # (bench/cuda_scan_bwd_variants.py; under 90 s of GPU time).
  export CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0
  timeout 150 python3 bench/cuda_scan_bwd_variants.py > "$OUT/bwd_variants.log" 2>&1
  ;;
graphs-and-row)
  # GPU 0: the detector-graphs phase; GPU 1 at the same time: the CUDA kernels' GPU tests, the backend checks,
  # then the 256x128 s16 row (the opt-in weight memo on the timed path).
  detector_graphs &
  (export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=1 TRITON_INTERPRET=0
   timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_cuda_scan.py \
     tests/test_kernels_cuda_conv.py >"$OUT/kernel_checks.log" 2>&1
   timeout 120 python3 bench/speed_vs_vit.py --checks-only --backends triton --no-plain-norm >>"$OUT/kernel_checks.log" 2>&1
   timeout 150 python3 bench/speed_vs_vit.py --timing-only --quick --backends triton --no-plain-norm \
     >"$OUT/speed.log" 2>&1) &
  wait
  ;;
pipeline-profile)
  # GPU 0: 16 cameras of 1080p (decoder processes) sampled by py-spy, every thread of the run, idle samples
  # included (waits for the GPU and for frames show as the Python line that waits); raw stacks to
  # $OUT/pyspy.txt, summarised by bench/pyspy_summary.py. Native frames (--native) made py-spy fall 100 s
  # behind and lose everything.
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 YOLO_OFFLINE=1 REIDCAM_SHARED=.gpu/shared
  python3 -m pip install -q --no-index --no-deps --target /tmp/pyspy .gpu/py_spy-*.whl 2>&1 | tail -1
  detector="$PWD/.gpu/shared/models/yolov8n-from-tflite.pt"
  # first a plain run, which also writes the clips (a fresh machine has none; under py-spy that alone
  # took the whole call), then the sampled one
  timeout 200 python3 bench/gpu_pipeline.py --device cuda --cameras 16 --frames 100 --detector "$detector" \
    --no-overlap --decode process >"$OUT/pipeline.log" 2>&1
  timeout -s INT 120 /tmp/pyspy/bin/py-spy record --rate 100 --idle --threads --format raw \
    --output "$OUT/pyspy.txt" -- python3 bench/gpu_pipeline.py --device cuda --cameras 16 --frames 100 \
    --detector "$detector" --no-overlap --decode process >>"$OUT/pipeline.log" 2>&1
  python3 bench/pyspy_summary.py "$OUT/pyspy.txt" >"$OUT/pyspy_summary.txt" 2>&1
  ;;
table-and-upload)
  # GPU 0: the speed table at every size; GPU 1 at the same time: the frame upload's GPU test, then 16 cameras
  # of 1080p decoded in threads and in processes (frames uploaded by DMA from the page-locked rings), then
  # 1 and 4 cameras in processes.
  export REIDCAM_SCAN=triton
  (export CUDA_VISIBLE_DEVICES=0
   timeout 450 python3 bench/speed_vs_vit.py --timing-only --backends triton --no-plain-norm >"$OUT/speed.log" 2>&1) &
  (export CUDA_VISIBLE_DEVICES=1 YOLO_OFFLINE=1 REIDCAM_SHARED=.gpu/shared TRITON_INTERPRET=0
   detector="$PWD/.gpu/shared/models/yolov8n-from-tflite.pt"
   timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_upload.py >"$OUT/checks.log" 2>&1
   for decode in thread process; do
     timeout 120 python3 bench/gpu_pipeline.py --device cuda --cameras 16 --frames 100 --detector "$detector" \
       --no-overlap --decode "$decode" >>"$OUT/pipeline.log" 2>&1
   done
   timeout 120 python3 bench/gpu_pipeline.py --device cuda --cameras 1,4 --frames 100 --detector "$detector" \
     --no-overlap --decode process >>"$OUT/pipeline.log" 2>&1) &
  wait
  ;;
conv-and-decode)
  # GPU 0: the CUDA kernels' GPU tests (real Triton, not the interpreter), the backend checks, then the
  # 256x128 s16 row with the core's kernels (both conv forwards timed); GPU 1 at the same time: 16 cameras
  # of 1080p decoded in reader threads, then in decoder processes (streams.decode), detection not overlapped.
  export REIDCAM_SCAN=triton
  (export CUDA_VISIBLE_DEVICES=0 TRITON_INTERPRET=0
   timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_cuda_scan.py \
     tests/test_kernels_cuda_conv.py >"$OUT/checks.log" 2>&1
   timeout 120 python3 bench/speed_vs_vit.py --checks-only --backends triton --no-plain-norm >>"$OUT/checks.log" 2>&1
   timeout 150 python3 bench/speed_vs_vit.py --timing-only --quick --backends triton --no-plain-norm \
     >"$OUT/speed.log" 2>&1) &
  (export CUDA_VISIBLE_DEVICES=1 YOLO_OFFLINE=1 REIDCAM_SHARED=.gpu/shared
   detector="$PWD/.gpu/shared/models/yolov8n-from-tflite.pt"
   for decode in thread process; do
     timeout 170 python3 bench/gpu_pipeline.py --device cuda --cameras 16 --frames 100 --detector "$detector" \
       --no-overlap --decode "$decode" >>"$OUT/pipeline.log" 2>&1
   done) &
  wait
  ;;
switch-interval-ab)
  # GPU 0: 16 cameras of 1080p at GIL switch intervals of 5 (Python's default), 1 and 0.5 ms, detection
  # not overlapped (bench/NOTES-speed.md, attempt 36), one process per run.
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 YOLO_OFFLINE=1 REIDCAM_SHARED=.gpu/shared
  detector="$PWD/.gpu/shared/models/yolov8n-from-tflite.pt"
  for interval in 0.005 0.001 0.0005; do
    timeout 150 python3 bench/gpu_pipeline.py --device cuda --cameras 16 --frames 100 --detector "$detector" \
      --no-overlap --switch-interval "$interval" >>"$OUT/pipeline.log" 2>&1
  done
  ;;
row)
  # GPU 0: the 256x128 s16 row and the core's kernels, alone on the host.
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0
  timeout 120 python3 bench/speed_vs_vit.py --timing-only --quick --backends triton --no-plain-norm >"$OUT/speed.log" 2>&1
  ;;
scan-ab)
  # GPU 0: this scan_fwd.cu against the one carried as .gpu/scan_fwd_*.cu, same process, same inputs.
  export CUDA_VISIBLE_DEVICES=0
  timeout 120 python3 bench/cuda_scan_variants.py --sources .gpu/scan_fwd_*.cu >"$OUT/variants.log" 2>&1
  ;;
ncu-and-row)
  # GPU 0: the 256x128 s16 row and the core's kernels, then Nsight Compute on the CUDA forward scan (stall
  # reasons, occupancy, throughput; clocks left as they are, after the timed run).
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0
  timeout 150 python3 bench/speed_vs_vit.py --timing-only --quick --backends triton --no-plain-norm \
    >"$OUT/speed.log" 2>&1
  timeout 150 ncu --clock-control none --kernel-name regex:bimamba_scan_fwd_bf16_c1 --launch-skip 3 \
    --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section SchedulerStats --section ComputeWorkloadAnalysis --section InstructionStats --print-details all \
    python3 bench/cuda_scan_variants.py --batches 256 --tokens 140 >"$OUT/ncu_scan.txt" 2>&1
  ;;
variants-and-profile)
  # GPU 0: the CUDA scan's variants (and whether Nsight Compute is here); GPU 1: the inference profile.
  export REIDCAM_SCAN=triton
  (export CUDA_VISIBLE_DEVICES=0
   { command -v ncu; ls -d /usr/local/cuda*/nsight-compute* /opt/nvidia/nsight-compute* 2>/dev/null; } >"$OUT/ncu.log" 2>&1
   timeout 200 python3 bench/cuda_scan_variants.py >"$OUT/variants.log" 2>&1) &
  (export CUDA_VISIBLE_DEVICES=1
   timeout 250 python3 bench/profile_model.py --out "$OUT" >"$OUT/profile.log" 2>&1) &
  wait
  ;;
table-and-pipeline)
  # GPU 0: the speed table at every size, the CUDA and the Triton forward scan, then the core's kernels;
  # GPU 1: the CUDA scan's tests and the backend checks, the kernel profile, then the pipeline on 1, 4, 16
  # cameras.
  export REIDCAM_SCAN=triton
  (export CUDA_VISIBLE_DEVICES=0
   timeout 400 python3 bench/speed_vs_vit.py --timing-only --backends triton --no-plain-norm >"$OUT/speed.log" 2>&1) &
  (export CUDA_VISIBLE_DEVICES=1 YOLO_OFFLINE=1 REIDCAM_SHARED=.gpu/shared
   detector="$PWD/.gpu/shared/models/yolov8n-from-tflite.pt"
   timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_cuda_scan.py >"$OUT/checks.log" 2>&1
   timeout 120 python3 bench/speed_vs_vit.py --checks-only --backends triton --no-plain-norm >>"$OUT/checks.log" 2>&1
   timeout 100 python3 bench/profile_model.py --out "$OUT" >"$OUT/profile.log" 2>&1
   timeout 180 python3 bench/gpu_pipeline.py --device cuda --cameras 1,4,16 --frames 100 --detector "$detector" \
     >"$OUT/pipeline.log" 2>&1) &
  wait
  ;;
measure-all)
  # Everything issue 6 measures, in one call: GPU 0 the speed table (autotuned, every size);
  # GPU 1 the kernel profile, the embedder per batch size, then the pipeline on 1, 4, 16 cameras.
  python3 -c "import scipy, requests, pandas" || echo "MISSING: carry wheels of the modules named above"
  export REIDCAM_SCAN=triton
  (export CUDA_VISIBLE_DEVICES=0
   timeout 100 python3 bench/speed_vs_vit.py --checks-only --backends triton --no-plain-norm >"$OUT/checks.log" 2>&1
   timeout 450 python3 bench/speed_vs_vit.py --timing-only --backends triton --no-plain-norm >"$OUT/speed.log" 2>&1) &
  (export CUDA_VISIBLE_DEVICES=1
   timeout 260 python3 bench/profile_model.py --out "$OUT" >"$OUT/profile.log" 2>&1
   timeout 60 python3 bench/gpu_embedder.py >"$OUT/side.log" 2>&1
   REIDCAM_SHARED=.gpu/shared YOLO_OFFLINE=1 timeout 200 python3 bench/gpu_pipeline.py --device cuda \
     --cameras 1,4,16 --frames 100 --detector "$PWD/.gpu/shared/models/yolov8n-from-tflite.pt" >>"$OUT/side.log" 2>&1)
  wait
  ;;
detector-and-pipeline)
  # The detector's parts per 1080p frame (tensor path vs predict), then the pipeline on 1, 4, 16 cameras.
  # Both read vtest.avi from the carried .gpu/shared (the device has no ../shared).
  export REIDCAM_SCAN=triton CUDA_VISIBLE_DEVICES=0 YOLO_OFFLINE=1 REIDCAM_SHARED=.gpu/shared
  detector="$PWD/.gpu/shared/models/yolov8n-from-tflite.pt"
  timeout 120 python3 bench/gpu_detector.py --detector "$detector" >"$OUT/side.log" 2>&1
  timeout 300 python3 bench/gpu_pipeline.py --device cuda --cameras 1,4,16 \
    --frames 100 --detector "$detector" >>"$OUT/side.log" 2>&1
  ;;
speed-and-train)
  echo "== [$(elapsed) s] GPU 0: speed vs ViT-B (all sizes), GPU 1: shipped-weights candidates"
  CUDA_VISIBLE_DEVICES=0 timeout 530 python3 bench/speed_vs_vit.py --timing-only --backends triton \
    --no-autotune --skip-core --no-plain-norm >"$OUT/speed.log" 2>&1 &
  look=(data.look_jitter=0.4 data.look_blur_p=0.3 data.look_lowres_p=0.3)
  person=(.gpu/reid_vtest_person "model.img_size=[128,64]" data.p=6 data.k=8)
  export CUDA_VISIBLE_DEVICES=1
  train_candidate person_look "${person[@]}" "${look[@]}" &
  train_candidate person_look_lr35 "${person[@]}" "${look[@]}" optim.lr=0.0035 &
  train_candidate tracklet_look .gpu/reid_vtest "model.img_size=[128,64]" "${look[@]}" &
  train_candidate person_plain "${person[@]}" &
  wait
  collect_candidates person_look person_look_lr35 tracklet_look person_plain
  ;;
ddp)
  # The three runs share one synthetic set (TMPDIR/reidcam_gpu_train/synthetic_market, written by the first).
  echo "== [$(elapsed) s] ReIDMamba-S, synthetic data: 1 GPU at global batch 64 (GPU 0); profile on GPU 1"
  common=(--epochs 4 --ids 256 --images-per-id 16 --num-workers 6)
  export TMPDIR=/tmp/ddp REIDCAM_SCAN=triton
  mkdir -p "$TMPDIR"
  CUDA_VISIBLE_DEVICES=1 timeout 200 python3 bench/profile_model.py --out "$OUT" >"$OUT/profile.log" 2>&1 &
  ddp_run() {  # $1 name, $2 processes, rest: recipe overrides
    local name=$1 procs=$2; shift 2
    timeout "${RUN_TIMEOUT:-130}" torchrun --standalone --nproc_per_node "$procs" bench/gpu_train.py \
      --out "/tmp/$name" "${common[@]}" "$@" >"/tmp/$name.log" 2>&1
    cp -f "/tmp/$name/gpu_train_summary.json" "$OUT/$name.json" 2>/dev/null
    grep -E "epoch [0-9]+:|evaluated|Error|error" "/tmp/$name.log" | tail -8 >>"$OUT/ddp.log"
  }
  CUDA_VISIBLE_DEVICES=0 RUN_TIMEOUT=320 ddp_run ddp1_b64 1
  wait
  echo "== [$(elapsed) s] 2 GPUs, global batch 64 (32 per GPU)"
  RUN_TIMEOUT=140 ddp_run ddp2_b64 2
  echo "== [$(elapsed) s] 2 GPUs, global batch 128 (64 per GPU)"
  RUN_TIMEOUT=100 ddp_run ddp2_b128 2 data.p=32
  ;;
one-gpu-and-profile)
  # A fresh machine compiles the Triton kernels for ~3 minutes in the first epoch: the 1-GPU run gets room for it.
  echo "== [$(elapsed) s] GPU 0: 1 GPU at global batch 64 to the end; GPU 1: kernel profile, then the 256x128 s16 speed row"
  common=(--epochs 4 --ids 256 --images-per-id 16 --num-workers 6)
  export TMPDIR=/tmp/ddp REIDCAM_SCAN=triton
  mkdir -p "$TMPDIR"
  (CUDA_VISIBLE_DEVICES=1 timeout 250 python3 bench/profile_model.py --out "$OUT" >"$OUT/profile.log" 2>&1
   CUDA_VISIBLE_DEVICES=1 timeout 280 python3 bench/speed_vs_vit.py --timing-only --backends triton --quick \
     --no-plain-norm --skip-core >"$OUT/speed.log" 2>&1) &
  CUDA_VISIBLE_DEVICES=0 timeout 450 torchrun --standalone --nproc_per_node 1 bench/gpu_train.py \
    --out /tmp/ddp1_b64 "${common[@]}" >/tmp/ddp1_b64.log 2>&1
  cp -f /tmp/ddp1_b64/gpu_train_summary.json "$OUT/ddp1_b64.json"
  grep -E "epoch [0-9]+:|evaluated|Error|error" /tmp/ddp1_b64.log | tail -8 >"$OUT/ddp.log"
  wait
  ;;
profile)
  echo "== [$(elapsed) s] GPU 0: kernel profile; GPU 1: ReIDMamba-S vs ViT-B, autotuned scan configs"
  CUDA_VISIBLE_DEVICES=0 REIDCAM_SCAN=triton timeout 300 python3 bench/profile_model.py --out "$OUT" >"$OUT/profile.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=1 timeout 540 python3 bench/speed_vs_vit.py --timing-only --backends triton \
    --no-plain-norm >"$OUT/speed.log" 2>&1
  wait
  ;;
pipeline)
  # GPU 0: the main job with the detector on the GPU (the float YOLOv8n made from the INT8 TFLite model by
  # bench/detector_from_tflite.py); GPU 1 meanwhile: the kernel profile.
  python3 -c "import scipy, requests, pandas" || echo "MISSING: carry wheels of the modules named above"
  export REIDCAM_SHARED=.gpu/shared YOLO_OFFLINE=1 REIDCAM_SCAN=triton
  [ -n "${SKIP_PROFILE:-}" ] || CUDA_VISIBLE_DEVICES=1 timeout 400 python3 bench/profile_model.py --out "$OUT" >"$OUT/profile.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=0 timeout 500 python3 bench/gpu_pipeline.py --device cuda --cameras 1,4,16 --frames 100 \
    --detector "$PWD/.gpu/shared/models/yolov8n-from-tflite.pt" >"$OUT/pipeline.log" 2>&1
  wait
  ;;
esac
tar czf /tmp/triton_cache.tgz -C /tmp tcache && ls -la /tmp/triton_cache.tgz
# SKIP_TRITON_CACHE=1 leaves it out: a call's files come back only up to a count
[ -z "${SKIP_TRITON_CACHE:-}" ] && [ "$(stat -c %s /tmp/triton_cache.tgz)" -lt 16000000 ] && cp /tmp/triton_cache.tgz "$OUT/"
echo "== [$(elapsed) s] done"
for f in "$OUT"/ddp*.json; do [ -f "$f" ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], {k: d.get(k) for k in ('world_size','images_per_s_steady','peak_memory_mib','final_metrics','wall_seconds')})" "$f"; done
for f in "$OUT"/*.log; do echo "--- $f"; tail -5 "$f"; done
