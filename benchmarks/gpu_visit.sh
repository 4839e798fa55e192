#!/usr/bin/env bash
# A GPU-machine visit, in parts that each fit one 10-minute device call:
#   bash benchmarks/gpu_visit.sh tests      # the whole test suite on CUDA tensors (may pass 585 s: then the halves)
#   bash benchmarks/gpu_visit.sh tests-a    # its first half (test files up to test_gpu_ecosystem.py; 134 s, H100)
#   bash benchmarks/gpu_visit.sh tests-b    # the second half (294 s on the H100, eighth session)
#   (WORKERS=N sets pytest-xdist's workers, 8 by default: tests-b ran in 231 s with 14, thirteenth session, but
#   tests-a ran out of GPU memory with 14; TESTS_LIMIT=S the halves' time limit, 585 s by default.)
#   bash benchmarks/gpu_visit.sh checks     # CuTeDSL check, validation vs Quack, first-call times, host profile
#   bash benchmarks/gpu_visit.sh sanitize   # compute-sanitizer memcheck / initcheck / racecheck (sanitize.sh,
#                                           # then sanitize_features.py)
#   bash benchmarks/gpu_visit.sh sanitize-rules  # the same tools on sanitize_features.py --set rules only
#   bash benchmarks/gpu_visit.sh bench      # the LayerNorm benchmark over every shape of anchors.md, JSON + plot
#   bash benchmarks/gpu_visit.sh features   # RMSNorm / fused residual / out_dtype benchmarks (seed shapes)
#   bash benchmarks/gpu_visit.sh probes-a   # the untimed leads (docs/perf-notes.md, "Next GPU visit"): both fused
#                                           # column sums, a step's kernels, RMSNorm's staged backward, "cl2"
#   bash benchmarks/gpu_visit.sh probes-b   # the Triton leads (thirteenth session): row blocks at N <= 16384, out
#                                           # fp32, the backward at N = 256, small-M forward
#   bash benchmarks/gpu_visit.sh probes-c   # the thirteenth session's follow-ups: N = 8192 blocks at more M, out
#                                           # fp32 at more shapes, CuTeDSL fp16 vs bf16 backward (probe + ncu)
#   bash benchmarks/gpu_visit.sh probes-d   # the fourteenth session's leads: the CuTeDSL backward fp16 / bf16 with
#                                           # the column sum separate and fused, does its speed follow the dtype or the
#                                           # data (data_pattern_probe.py), Triton's N = 8192 row blocks at fewer rows,
#                                           # the small-M forward through the API
#   bash benchmarks/gpu_visit.sh probes-e   # the sixteenth session's leads: the Triton wide forward with held chunks,
#                                           # the Triton backward with a register prefetch
#   bash benchmarks/gpu_visit.sh probes-f   # one short call of probes-d's and probes-e's deciding leads
#   bash benchmarks/gpu_visit.sh probes-g   # the Triton forward at N = 8192 / 16384 against compile; ncu of the
#                                           # Triton backward at 32768x256
#   bash benchmarks/gpu_visit.sh probes-h   # the next visit's leads: Triton fp32-out forward over the tuner's
#                                           # candidates, 32768x32768 re-timed, the rest of probes-d
#   bash benchmarks/gpu_visit.sh probes-i   # the eighteenth session's: GPU tests of its defaults, the fp32-out
#                                           # feature bench, ragged clustered rows against clusters of any size
#   bash benchmarks/gpu_visit.sh probes-j   # the fitted clusters as defaults: test_gpu.py, probes at ragged N
#   bash benchmarks/gpu_visit.sh probes-k   # the no-growth check alone; the ragged clustered forward in 8-CTA
#                                           # clusters ("c8"), 36864
#   bash benchmarks/gpu_visit.sh probes-m   # clusters of at most 8 for the ragged forward at 6 vectors, fp32 and
#                                           # 1024-thread CTAs; the Triton fp32-out forward at 4096x6144 / 12288
#   bash benchmarks/gpu_visit.sh probes-n   # the ragged forward rule: GPU tests and timed against the fitted
#                                           # clusters; the staged residual backward; Triton fp32-out 10240-14336
#   bash benchmarks/gpu_visit.sh probes-o   # the staged residual backward as the default: its GPU tests; the
#                                           # ragged forward's 8-CTA clusters with weight and bias early
#   bash benchmarks/gpu_visit.sh probes-p   # the fp32 staged residual backward, fp32 and bf16 dy / dh
#   bash benchmarks/gpu_visit.sh probes-q   # the CuTeDSL backward's row tilings at 4095x5000, 4096² and 32768x256
#   bash benchmarks/gpu_visit.sh probes-r   # the persistent CuTeDSL forward over unclustered rows, 1-4 CTAs per SM
#   bash benchmarks/gpu_visit.sh probes-s   # that forward against the per-row kernel at 4096x8192 and other M;
#                                           # weight only; every variant at 32768x1024; memcheck / initcheck of
#                                           # its rule cases (not yet run: ~500 s estimated, its steps' limits
#                                           # add up past 600 s, so the sanitizers, last, may be cut)
#   bash benchmarks/gpu_visit.sh probes-t   # the Triton forward at 32768x4096 (2-3% behind Liger in every bench)
#                                           # and one wave: weight and bias at the tile's offsets, old and new,
#                                           # one row a program, weight and bias first, 4-16 warps (~2.5 min)
#   bash benchmarks/gpu_visit.sh probes-u   # the CuTeDSL forward's rows of 2-4 KB in one 128-thread CTA (the
#                                           # twenty-fifth session's rule): its GPU tests, memcheck / initcheck of
#                                           # its two rule cases, old / new tilings side by side (~3 min)
#   bash benchmarks/gpu_visit.sh probes-v   # leads prepared untimed: Triton's forward at N = 16384 in one-row
#                                           # chunks of 1024-4096 (compile's shape of kernel), and every CuTeDSL
#                                           # forward variant at M = 128 and M = 1, CuTeDSL tilings
#                                           # that ptxas gives few warps an SM (N = 640-14336) (~9 min:
#                                           # two calls, WHICH=1 / WHICH=2)
# (tests: 466 s on the H100 in the sixth session, against a 600 s device call.)
# Logs and JSON go under $OUT (default benchmarks/results/latest); a short summary is printed last.
# Run from the repository root after `source .gpu/env.sh` (the GPU kit: CuTeDSL, Quack, Liger).
set -uo pipefail
part=${1:?usage: gpu_visit.sh tests|tests-a|tests-b|checks|sanitize|sanitize-rules|bench|features|probes-a|probes-b|probes-c|probes-d|probes-e|probes-f|probes-g|probes-h|probes-i|probes-j|probes-k|probes-m|probes-n|probes-o|probes-p|probes-q|probes-r|probes-s|probes-t|probes-u|probes-v|racecheck-late}
out=${OUT:-benchmarks/results/latest}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  date -u
} > "$out/device-$part.txt" 2>&1
# memcheck and initcheck of sanitize_features.py's rule cases from index $1 on (both backends): logs
# $out/sanitize-$2-<tool>.log, each run at most $3 s, a summary line each labelled $4.
sanitize_rule_cases() {
  for tool in memcheck initcheck; do
    log="$out/sanitize-$2-$tool.log"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$3" compute-sanitizer --tool "$tool" --report-api-errors no \
      --error-exitcode 86 python benchmarks/sanitize_features.py --set rules --first "$1" > "$log" 2>&1
    echo "$4 $tool: rc=$? $(grep -E 'ERROR SUMMARY' "$log" | tail -1) $(grep failures: "$log")"
  done
}
case "$part" in
  tests)
    timeout 585 python -m pytest tests -q -n "${WORKERS:-8}" -p no:cacheprovider -rfEs > "$out/gpu-tests.log" 2>&1
    echo "tests: rc=$? $(tail -1 "$out/gpu-tests.log")"
    grep -E "^(FAILED|ERROR)" "$out/gpu-tests.log" | cut -c1-200 | head -30
    ;;
  tests-a|tests-b)
    if [ "$part" = tests-a ]; then
      files=$(ls tests/layernorm/test_*.py | sort | awk '$0 <= "tests/layernorm/test_gpu_ecosystem.py"')
    else
      files=$(ls tests/layernorm/test_*.py | sort | awk '$0 > "tests/layernorm/test_gpu_ecosystem.py"')
    fi
    # shellcheck disable=SC2086
    timeout "${TESTS_LIMIT:-585}" python -m pytest $files -q -n "${WORKERS:-8}" -p no:cacheprovider -rfEs > "$out/gpu-$part.log" 2>&1
    echo "$part: rc=$? $(tail -1 "$out/gpu-$part.log")"
    grep -E "^(FAILED|ERROR)" "$out/gpu-$part.log" | cut -c1-200 | head -30
    ;;
  checks)
    timeout 170 python tests/layernorm/gpu_check_cutedsl.py --no-bench --budget 120 > "$out/cutedsl-check.log" 2>&1
    echo "cutedsl check: rc=$? $(tail -1 "$out/cutedsl-check.log")"
    timeout 120 python -m vibe_kernels.layernorm.validate > "$out/validate.txt" 2>&1
    echo "validate: rc=$?"
    timeout 150 python benchmarks/first_call.py --json "$out/first-call.json" > "$out/first-call.txt" 2>&1
    echo "first call: rc=$?"; cat "$out/first-call.txt"
    timeout 90 python benchmarks/host_profile.py triton cutedsl > "$out/host-profile.txt" 2>&1
    echo "host profile: rc=$?"; grep -E "layernorm\(|launch" "$out/host-profile.txt"
    timeout 90 python benchmarks/cutedsl_small_m.py > "$out/cutedsl-small-m.txt" 2>&1
    echo "cutedsl small M: rc=$?"; cat "$out/cutedsl-small-m.txt" | cut -c1-220
    ;;
  sanitize)
    OUT="$out" bash benchmarks/sanitize.sh
    # RMSNorm, the fused residual and out_dtype (sanitize.sh's sweep is plain LayerNorm)
    for tool in memcheck racecheck initcheck; do
      log="$out/sanitize-features-$tool.log"
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 compute-sanitizer --tool "$tool" --report-api-errors no \
        --error-exitcode 86 python benchmarks/sanitize_features.py > "$log" 2>&1
      echo "features $tool: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1) $(grep failures: "$log")"
    done
    # Nine logs: one archive (the device tool returns at most 8 files a call).
    tar czf "$out/sanitize-logs.tgz" -C "$out" sanitize $(cd "$out" && ls sanitize-features-*.log) \
      && rm -rf "$out/sanitize" "$out"/sanitize-features-*.log
    ;;
  sanitize-rules)
    # The rules' shapes (sanitize_features.py --set rules), the CuTeDSL backward's fused column sum included.
    for tool in memcheck racecheck initcheck; do
      log="$out/sanitize-rules-$tool.log"
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 170 compute-sanitizer --tool "$tool" --report-api-errors no \
        --error-exitcode 86 python benchmarks/sanitize_features.py --set rules > "$log" 2>&1
      echo "rules $tool: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1) $(grep failures: "$log")"
    done
    ;;
  probes-r)
    # The twenty-second session's lead: the CuTeDSL forward at M = 4096 with weight and bias misses 97% of a copy
    # by 1-2.5 µs (4096x8192 fp16 + bias 95% against bf16 without a bias 98%): each row re-reads 8 bytes of fp32
    # weight and bias a column. The persistent kernel reads them once into shared memory; over unclustered rows it
    # runs 1-4 CTAs per SM (FwdConfig.persistent_ctas_per_sm). Without and with stored statistics.
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    # Since that session the default there is persistent: "per-row" is the one-CTA-a-row kernel it replaced.
    for stats in "" --stats; do
      timeout 150 python benchmarks/cutedsl_fwd_probe.py --shapes 4096x8192,4096x4096,4096x16384,32768x4096 \
        --only per-row,persist,persist2,persist3,persist4 $stats >> "$out/cutedsl-fwd-persist-unclustered.txt" 2>&1
      echo "persistent unclustered forward ${stats:-no stats}: rc=$?"
    done
    # Above 8192 rows the one-CTA-a-row kernel stays: with statistics stored ptxas gives it 80 registers at N = 8192
    # (fp32 weight and bias; 64 without them), three CTAs per SM instead of four. "+64r": a 4-CTA launch bound (64
    # registers, 8 bytes spilled).
    timeout 120 python benchmarks/cutedsl_fwd_probe.py --shapes 32768x8192,16384x8192 --only default,default+64r,persist2 \
      --stats >> "$out/cutedsl-fwd-persist-unclustered.txt" 2>&1
    echo "forward with statistics above 8192 rows: rc=$?"
    grep -E "^[0-9]+x[0-9]+ " "$out/cutedsl-fwd-persist-unclustered.txt" | sed -E 's/, err [^)]*//g' | cut -c1-260
    ;;
  probes-s)
    # The twenty-third session's leads. The persistent unclustered forward (the default at N = 4096 / 8192 / 16384,
    # 16-bit x, fp32 weight and bias, 1024-8192 rows) against the per-row kernel it replaced, at 4096x8192 (the
    # probe's duplicate filter dropped per-row there in probes-r) and at the rule's other M, with and without the
    # statistics stored; then memcheck and initcheck of its three rule cases (racecheck ran: 0 hazards) and of the
    # twenty-fourth session's two Triton cases (weight and bias at the tile's offsets), both backends each.
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    for stats in --stats ""; do
      timeout 170 python benchmarks/cutedsl_fwd_probe.py --only per-row \
        --shapes 4096x8192xfloat16,1024x8192,2048x8192,8192x8192,2048x4096,8192x4096,2048x16384,8192x16384 $stats \
        >> "$out/cutedsl-fwd-persist-m.txt" 2>&1
      echo "persistent forward over M ${stats:-no stats}: rc=$?"
    done
    # The bias-free rows (an fp32 weight only, 4 bytes a column: the bench's 4096x16384 fp16 and 4096x8192 bf16),
    # outside the rule: the default there is the per-row kernel.
    timeout 120 python benchmarks/cutedsl_fwd_probe.py --only persist,persist2,persist3,persist4 --affine weight \
      --shapes 4096x16384xfloat16,4096x8192xbfloat16,4096x4096xbfloat16 --stats >> "$out/cutedsl-fwd-persist-m.txt" 2>&1
    echo "persistent forward, weight only: rc=$?"
    # The forward misses at 32768x1024 (96%, 97 asked; Triton 98): every probe variant there, with the statistics
    # stored and without (four 32-thread rows a CTA, weight and bias early: each warp re-reads 8 KB of them a row),
    # the persistent kernel over several rows a CTA and over 16 / 32-byte tilings included ("persist16B8" ...).
    timeout 120 python -m pytest tests/layernorm/test_gpu.py -q -p no:cacheprovider -k persistent_forward_gives \
      > "$out/gpu-persistent.log" 2>&1
    echo "persistent forward bit-identity (several rows a CTA included): rc=$? $(tail -1 "$out/gpu-persistent.log")"
    for stats in "" --stats; do
      timeout 150 python benchmarks/cutedsl_fwd_probe.py --shapes 32768x1024 $stats > "$out/cutedsl-fwd-1024${stats}.txt" 2>&1
      echo "32768x1024 every variant ${stats:-no stats}: rc=$?"
      grep -E "^[0-9]+x[0-9]+ " "$out/cutedsl-fwd-1024${stats}.txt" | sed -E 's/, err [^)]*//g' | cut -c1-600
    done
    grep -E "^[0-9]+x[0-9]+ " "$out/cutedsl-fwd-persist-m.txt" | sed -E 's/, err [^)]*//g' | cut -c1-200
    sanitize_rule_cases 20 new 120 "new rule cases"
    ;;
  probes-t)
    # Triton's forward at 32768x4096 bf16 has read 0.1849-0.1881 ms in every bench since 2026-11-24, Liger's
    # 0.1816-0.1834 (one 8-warp program a row, weight and bias loaded with the row): 2-3% behind, past the 2%
    # issue 5 allows. The twenty-fourth session found why it may be (on the CPU, untimed): fp32 weight and bias went
    # through shared memory in every program (a layout conversion); the default now loads them at the tile's
    # offsets ("t": FwdConfig.affine_tile). Timed here: the new default against the old one (r2x4096w8h), and the
    # resident alternatives no probe had timed at this width (one row a program, weight and bias first, 4-16 warps).
    # First the Triton numerics on CUDA (the bit-identity of affine_tile, every kernel with the paired row sums).
    timeout 200 python -m pytest tests/layernorm/test_triton_numerics.py tests/layernorm/test_rmsnorm.py \
      tests/layernorm/test_residual.py -q -n "${WORKERS:-8}" -p no:cacheprovider -rfEs > "$out/gpu-triton-tests.log" 2>&1
    echo "triton numerics, rmsnorm, residual on CUDA: rc=$? $(tail -1 "$out/gpu-triton-tests.log")"
    timeout 150 python benchmarks/triton_fwd_probe.py --repeats 3 --api --shapes 32768x4096,8192x4096,4096x4096xfloat16 \
      --configs r2x4096w8h,r1x4096w8ht,r1x4096w8h,r1x4096w8hat,r2x4096w8t,r2x4096w8hat,r1x4096w4ht,r1x4096w16ht,r4x4096w16ht,r2x4096w16ht \
      > "$out/triton-fwd-4096.txt" 2>&1
    echo "triton forward 4096 resident variants: rc=$?"
    # One wave (a row a program): the old default (weight and bias first, one-row loads) against the new (+ "t").
    timeout 90 python benchmarks/triton_fwd_probe.py --repeats 5 --api --shapes 128x4096,1x4096 \
      --configs r1x4096w8a,r1x4096w4a,r1x4096w4at >> "$out/triton-fwd-4096.txt" 2>&1
    echo "one wave at 4096: rc=$?"
    timeout 60 python benchmarks/triton_fwd_probe.py --repeats 5 --shapes 128x8192 \
      --configs r1x8192w16a,r1x8192w8at,r1x8192w8a >> "$out/triton-fwd-4096.txt" 2>&1
    echo "one wave at 8192: rc=$?"
    grep -E "copy|%" "$out/triton-fwd-4096.txt" | sed -E 's/FwdConfig\(//; s/, tail_n=0, programs_per_sm=0//; s/, held_chunks=0\)//' | cut -c1-230
    # (Its first run also timed the twenty-fourth session's paired row sums against separate ones, in two processes:
    # h100-2026-12-07-p/probes-t/triton-sums.txt. They lost and were removed, with the probes' --separate-sums.)
    ;;
  probes-u)
    # The twenty-fifth session's rule (config.MID_ROW_BYTES): rows of 2-4 KB with weight and/or bias at M >= 4096 in
    # one 128-thread CTA, weight and bias after the statistics. Its GPU test (against the fp64 reference and the
    # multi-row tiling it replaced); the probe: the new default against the old tiling ("64B") at the shapes it was
    # chosen on and a few it was not, with and without the statistics stored; then memcheck and initcheck of its two
    # rule cases (sanitize_features.py --set rules from index 25) on both backends.
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    timeout 150 python -m pytest tests/layernorm/test_gpu.py -q -n "${WORKERS:-8}" -p no:cacheprovider -rfEs \
      -k "mid_row" > "$out/gpu-mid-row.log" 2>&1
    echo "mid-row forward GPU tests: rc=$? $(tail -1 "$out/gpu-mid-row.log")"
    for stats in "" --stats; do
      timeout 100 python benchmarks/cutedsl_fwd_probe.py --only 64B \
        --shapes 32768x1024,8192x1024,4096x1024,32768x1536,32768x2048,4096x2048,32768x1024xfloat16,32768x1024xfloat32,2048x1024,32768x896,32768x2304 \
        $stats >> "$out/cutedsl-fwd-mid-row.txt" 2>&1
      echo "mid-row probe ${stats:-no stats}: rc=$?"
    done
    grep -v "^device" "$out/cutedsl-fwd-mid-row.txt" | cut -c1-170
    sanitize_rule_cases 25 mid 100 "mid-row rule cases"
    ;;
  probes-v)
    # Leads the twenty-fifth session prepared on the CPU and could not time (its device time ran out).
    # (1) Triton's forward at N = 16384 trails torch.compile by 3-4% in every bench (4096x16384 fp16 0.0974 against
    #     0.0946 ms, 32768x16384 0.7583 against 0.7320). The default is two-row blocks of 8192 columns at 16 warps
    #     (chunked: statistics pass, then the normalizing pass re-reads the row from L2). Compile's generated kernel
    #     is a two-loop reduction too, but one row a program; one-row chunks of 8192 (8 warps) and 4096 (held) were
    #     timed in the sixteenth session, smaller chunks at 8-16 warps never. They pass the interpreter (CPU, 4 rows).
    #     c2048w16h is what torch 2.13's inductor heuristics pick at this N; registers and occupancy of each config
    #     (no spills) in docs/perf-notes.md's twenty-sixth session (benchmarks/triton_registers.py).
    # WHICH=1 runs (1) and (2), WHICH=2 runs (3): at most ~5 min each; both by default.
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    if [ "${WHICH:-12}" != 2 ]; then
    timeout 170 python benchmarks/triton_fwd_probe.py --repeats 3 --shapes 4096x16384xfloat16,32768x16384 \
      --configs c2048w16h,c2048w8h,c1024w8h,c1024w4h,c4096w16h,c4096w8h,c2048w16m2h > "$out/triton-fwd-16384-chunks.txt" 2>&1
    echo "triton forward 16384 one-row chunks: rc=$?"
    # (2) The forward at M = 128 (CuTeDSL and Triton 0.0059 ms against compile's 0.0056 in the last three benches,
    #     single samples) and M = 1: every CuTeDSL probe variant, without and with the statistics stored.
    for stats in "" --stats; do
      timeout 120 python benchmarks/cutedsl_fwd_probe.py --shapes 128x4096,1x4096 $stats \
        >> "$out/cutedsl-fwd-small-m.txt" 2>&1
      echo "cutedsl forward small M ${stats:-no stats}: rc=$?"
    done
    cut -c1-160 "$out/triton-fwd-16384-chunks.txt"; grep -v "^device" "$out/cutedsl-fwd-small-m.txt" | cut -c1-600
    fi
    # (3) The CuTeDSL forward's default tilings that ptxas gives few warps an SM (twenty-fifth session, bf16 x, fp32
    #     weight and bias, statistics not stored; docs/perf-notes.md has the table): multi-row CTAs at N = 640-896
    #     (88-115 registers, 16-20 warps; weight and bias after the statistics: 64, 32 warps: "late"); ragged
    #     128-thread rows at 2304 / 2560 (78, 24 warps; 256 threads of 2 vectors: 56, 32 warps: "32B"); 5120 (64
    #     registers under its launch bound, 16 bytes spilled), 7168 (110 registers, 16 warps) and 14336 (380 bytes
    #     spilled under its bound), where 512 / 1024 threads of 2 vectors fit 56-64 registers without spills ("32B",
    #     "t1024", "t1024late"). Never timed at these N.
    if [ "${WHICH:-12}" != 1 ]; then
    timeout 200 python benchmarks/cutedsl_fwd_probe.py --only late,32B,t1024,t1024late,default+64r \
      --shapes 32768x640,32768x896,32768x2304,32768x2560,32768x5120,32768x7168,8192x7168,32768x14336 \
      >> "$out/cutedsl-fwd-few-warps.txt" 2>&1
    echo "cutedsl forward few-warp tilings: rc=$?"
    timeout 100 python benchmarks/cutedsl_fwd_probe.py --only late,32B,t1024late --stats \
      --shapes 32768x896,32768x2560,32768x7168 >> "$out/cutedsl-fwd-few-warps.txt" 2>&1
    echo "cutedsl forward few-warp tilings --stats: rc=$?"
    grep -v "^device" "$out/cutedsl-fwd-few-warps.txt" | cut -c1-600
    fi
    ;;
  racecheck-late)
    # racecheck of the CuTeDSL rule cases from index 16 on (the twentieth to twenty-second sessions' rules), which
    # sanitize-rules' 170 s racecheck did not reach in the twenty-second session.
    log="$out/racecheck-late.log"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 400 compute-sanitizer --tool racecheck --report-api-errors no \
      --error-exitcode 86 python benchmarks/sanitize_features.py --set rules --backends cutedsl --first 16 > "$log" 2>&1
    echo "racecheck-late: rc=$? $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$log" | tail -1) $(grep failures: "$log")"
    grep -E " ok$| FAIL" "$log" | cut -c1-150
    ;;
  bench)
    timeout 560 python -m vibe_kernels.layernorm.bench --shapes all --json "$out/bench.json" --plot "$out/bench.png" \
      > "$out/bench.txt" 2> "$out/bench.err"
    echo "bench: rc=$?"
    grep -E "^\| +[0-9]+ \||^###|^\| [A-Z]" "$out/bench.txt" | cut -c1-150 | tail -50
    ;;
  probes-a)
    # The CuTeDSL leads of docs/perf-notes.md's "Next GPU visit" (at most 8 files come back from a device call).
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    # The staged backward's bit-identity test (with the cases added after the eleventh session's visits) and the
    # column sum in the backward's own launch (BwdConfig.fused_column_sum); then that against the second launch,
    # three interleaved repeats.
    timeout 150 python -m pytest tests/layernorm/test_gpu.py -q -p no:cacheprovider -k "stages or fused" \
      > "$out/stages-gpu-test.log" 2>&1
    echo "staged backward, fused column sum: rc=$? $(tail -1 "$out/stages-gpu-test.log")"
    timeout 150 python benchmarks/cutedsl_bwd_probe.py --only new,sep,fus --repeat 3 --shapes \
4096x8192xfp16,4096x4096xfp16,4095x5000xfp16,32768x256xbf16,32768x4096xbf16,32768x8192xbf16,8192x4096xfp32 \
      > "$out/cutedsl-bwd-fused.txt" 2>&1
    echo "fused column sum probe: rc=$?"; grep -E "^[0-9]+x[0-9]+ +[a-z0-9]+ +(new|sep|fus) " "$out/cutedsl-bwd-fused.txt"
    # The Triton backward's opt-in fused column sum (BwdConfig.fused_sum) against its default.
    timeout 120 python benchmarks/triton_bwd_probe.py --configs default+f --repeats 3 --shapes \
4096x8192xfloat16,4096x4096xfloat16,4095x5000xfloat16,4096x16384xfloat16,32768x1024xbfloat16,32768x4096xbfloat16 \
      > "$out/triton-bwd-fused.txt" 2>&1
    echo "Triton fused sum probe: rc=$?"; tail -16 "$out/triton-bwd-fused.txt" | cut -c1-160
    # What the gaps between a step's kernels cost at M = 4096 (torch.profiler).
    timeout 90 python benchmarks/profile_step.py --shapes 4096x8192xfloat16,4096x4096xfloat16,4095x5000xfloat16 \
      > "$out/profile-step.txt" 2>&1
    echo "step profile: rc=$?"; cut -c1-140 "$out/profile-step.txt"
    timeout 120 python benchmarks/cutedsl_bwd_probe.py --rms --shapes 4096x8192xfp16,4096x8192xbf16 \
      > "$out/cutedsl-bwd-rms.txt" 2>&1
    echo "RMSNorm backward probe: rc=$?"; grep -E "^[0-9]+x[0-9]+ .* (new|pf|l2|st2|st3|sep) " "$out/cutedsl-bwd-rms.txt"
    # The CuTeDSL forward at M = 4096 with its one-CTA rows split over two-CTA clusters ("cl2": half the last wave).
    timeout 120 python benchmarks/cutedsl_fwd_probe.py --shapes 4096x8192,4096x4096,4095x5000,4096x16384 --only cl2 \
      > "$out/cutedsl-fwd-cl2.txt" 2>&1
    echo "CuTeDSL forward probe: rc=$?"; grep -E "copy" "$out/cutedsl-fwd-cl2.txt" | cut -c1-200
    ;;
  probes-b)
    # The Triton leads of docs/perf-notes.md's "Next GPU visit".
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    # Row blocks at N <= 16384, and whole resident rows of one program at 4096x8192 (torch.compile: 98% there).
    timeout 90 python benchmarks/triton_fwd_probe.py --shapes 4096x8192xfloat16,4096x8192xbfloat16 \
      --configs c8192w16m2h,c8192w8m2h,c4096w8m2h,c4096w16m2h,r1x8192w8h,r1x8192w16h,r1x8192w4h \
      > "$out/triton-fwd-rows-narrow.txt" 2>&1
    echo "Triton forward probe (8192): rc=$?"
    timeout 60 python benchmarks/triton_fwd_probe.py --shapes 4096x4096xfloat16 \
      --configs c4096w8m2h,c4096w16m2h,c4096w8m4h,r1x4096w8h,r1x4096w4h,r1x4096w16h \
      >> "$out/triton-fwd-rows-narrow.txt" 2>&1
    timeout 60 python benchmarks/triton_fwd_probe.py --shapes 32768x16384 \
      --configs c4096w8m2h,c4096w16m2h,c4096w8m4h,c8192w8m2h >> "$out/triton-fwd-rows-narrow.txt" 2>&1
    echo "Triton forward probe (4096, 16384): rc=$?"; grep -vE "^device" "$out/triton-fwd-rows-narrow.txt" | cut -c1-150
    timeout 120 python benchmarks/triton_residual_probe.py --out-dtype float32 --dtype bfloat16 \
      --shapes 4096x8192,4096x16384,4096x4096 > "$out/triton-out-fp32.txt" 2>&1
    echo "Triton out fp32 probe: rc=$?"; tail -12 "$out/triton-out-fp32.txt" | cut -c1-160
    timeout 90 python benchmarks/triton_bwd_probe.py --shapes 32768x256 \
      --configs 64x256w16p1,16x256w8p2,16x256w4p4,32x256w8p2,32x256w16p1s2,64x256w16p1s2 > "$out/triton-bwd-256.txt" 2>&1
    echo "Triton backward probe: rc=$?"; tail -14 "$out/triton-bwd-256.txt" | cut -c1-160
    # Small M (128x4096: 86% of a copy in the bench against torch.compile's 92%): chunked and narrower resident
    # programs (weight and bias with the rows: a), five interleaved repeats (single 5-6 us samples misled before).
    timeout 60 python benchmarks/triton_fwd_probe.py --shapes 128x4096,1x4096,64x4096 --repeats 5 \
      --configs c2048w4h,c2048w8h,c1024w4h,r1x4096w4ha,r1x4096w16ha,r1x4096w8a,r1x4096w8h > "$out/triton-fwd-small-m.txt" 2>&1
    echo "Triton small-M forward probe: rc=$?"; grep -E "copy|default|[cr][0-9]+" "$out/triton-fwd-small-m.txt" | cut -c1-160
    ;;
  probes-c)
    # The thirteenth session's follow-ups (docs/perf-notes.md, "Next GPU visit").
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    # Triton's two-row blocks at N = 8192 beyond the 4096 rows they were adopted at, and at N < 8192.
    timeout 120 python benchmarks/triton_fwd_probe.py --repeats 3 --configs c4096w8h,c8192w8m2h \
      --shapes 32768x8192,16384x8192,8192x8192,4096x6144xfloat16,4096x7680xfloat16 > "$out/triton-fwd-8192-rows.txt" 2>&1
    echo "Triton N = 8192 blocks: rc=$?"; grep -vE "^device" "$out/triton-fwd-8192-rows.txt" | cut -c1-150
    # The wider-out rules (bf16 -> fp32) at more shapes.
    timeout 120 python benchmarks/triton_residual_probe.py --out-dtype float32 --dtype bfloat16 \
      --shapes 32768x1024,32768x4096,4096x2048 > "$out/triton-out-fp32-more.txt" 2>&1
    echo "Triton out fp32: rc=$?"; grep -E "default" "$out/triton-out-fp32-more.txt" | cut -c1-200
    # fp16 against bf16 in the CuTeDSL backward at 4096x8192: the probe, then ncu of a step's kernels.
    timeout 120 python benchmarks/cutedsl_bwd_probe.py --rms --shapes 4096x8192xfp16,4096x8192xbf16 --only new,sep \
      --repeat 3 > "$out/cutedsl-bwd-fp16-bf16.txt" 2>&1
    echo "CuTeDSL backward fp16 / bf16: rc=$?"; grep -E "^[0-9]+x[0-9]+ " "$out/cutedsl-bwd-fp16-bf16.txt"
    for dtype in float16 bfloat16; do
      timeout 150 ncu --clock-control none --launch-skip 20 --launch-count 6 --section SpeedOfLight \
        --section MemoryWorkloadAnalysis --section WarpStateStats --section LaunchStats --section Occupancy \
        python benchmarks/ncu_step.py --shape 4096x8192x$dtype --backend cutedsl --rms > "$out/ncu-rms-$dtype.txt" 2>&1
      echo "ncu $dtype: rc=$?"; grep -E "^  [a-z_].*\(|Duration|DRAM Throughput|Memory Throughput" "$out/ncu-rms-$dtype.txt" | head -12
    done
    ;;
  probes-d)
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    # The CuTeDSL backward, fp16 against bf16, the column sum in a second launch ("sep") and fused ("fus"), and the
    # ways of loading each tile's statistics (fourteenth session's lead: fp16 "sep" 80% of the add, bf16 90%, fp16
    # fused 91% in the twelfth session; sst / fst / pst / ust: BwdConfig.staged_stats, the default at 8192 since the
    # sixteenth session).
    timeout 180 python benchmarks/cutedsl_bwd_probe.py --rms --shapes 4096x8192xfp16,4096x8192xbf16 --only new,sep,ust \
      --repeat "${REPEAT:-3}" > "$out/cutedsl-bwd-fp16-bf16-rms.txt" 2>&1
    echo "CuTeDSL RMSNorm backward: rc=$?"; grep -E "^[0-9]+x[0-9]+ " "$out/cutedsl-bwd-fp16-bf16-rms.txt"
    # Does the backward's speed follow the dtype or the data?
    timeout 120 python benchmarks/data_pattern_probe.py > "$out/data-pattern.txt" 2>&1
    echo "data pattern: rc=$?"; cat "$out/data-pattern.txt"
    # Bit-identity of the staged variants (staged_stats) to the unstaged kernel.
    timeout 120 python -m pytest tests/layernorm/test_gpu.py -q -p no:cacheprovider -k "stages_give_the_same_bits" \
      > "$out/gpu-stages-tests.log" 2>&1
    echo "CuTeDSL staged backward tests (staged_stats): rc=$? $(tail -1 "$out/gpu-stages-tests.log")"
    timeout 180 python benchmarks/cutedsl_bwd_probe.py --shapes "${LN_SHAPES:-4096x8192xfp16,4096x8192xbf16,4095x5000xfp16}" \
      --only new,sep,fus,ust,sst,fst,pst --repeat "${REPEAT:-2}" > "$out/cutedsl-bwd-fp16-bf16-ln.txt" 2>&1
    echo "CuTeDSL LayerNorm backward: rc=$?"; grep -E "^[0-9]+x[0-9]+ " "$out/cutedsl-bwd-fp16-bf16-ln.txt"
    timeout 150 python -m pytest tests/layernorm/test_triton_numerics.py -q -p no:cacheprovider -k "two_row or wider_out" \
      > "$out/gpu-two-row-tests.log" 2>&1
    echo "Triton two-row block tests: rc=$? $(tail -1 "$out/gpu-two-row-tests.log")"
    # The two-row blocks (now the default from N = 6144 to 8192) between one wave and 4096 rows, and fp16 / bf16.
    timeout 120 python benchmarks/triton_fwd_probe.py --repeats 3 --configs c4096w8h \
      --shapes 4096x8192xfloat16,4096x8192,2048x8192,1024x8192,512x8192,1024x6144xfloat16 \
      > "$out/triton-fwd-8192-few-rows.txt" 2>&1
    echo "Triton N = 8192 blocks, fewer rows: rc=$?"; grep -vE "^device" "$out/triton-fwd-8192-few-rows.txt" | cut -c1-150
    # Small M: the bench (the API under no_grad) read 83-88% at 128x4096 where this probe's default read 95-97%.
    timeout 90 python benchmarks/triton_fwd_probe.py --repeats 5 --api --configs r1x4096w4 --shapes 128x4096,1x4096 \
      > "$out/triton-fwd-small-m-api.txt" 2>&1
    echo "Triton small-M forward, API path: rc=$?"; grep -vE "^device" "$out/triton-fwd-small-m-api.txt" | cut -c1-150
    ;;
  probes-e)
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    # The Triton forward at N >= 65536 with each row's first chunks held in registers (FwdConfig.held_chunks,
    # sixteenth session): the statistics pass's re-reads of a row's first chunks miss L2 most. p1: one program per
    # SM (fewer rows in flight); k<n>: n chunks held (16-bit, two elements a register).
    timeout 400 python benchmarks/triton_fwd_probe.py --repeats 3 \
      --configs c8192w16p1h,c8192w16p1k2h,c4096w16p1k4h,c4096w8k4h,c8192w8k1h,c8192w8k2h,c8192w16p1k4h \
      --shapes 16384x131072,8192x262144,32768x65536 > "$out/triton-fwd-held.txt" 2>&1
    echo "Triton wide forward, held chunks: rc=$?"; grep -vE "^device" "$out/triton-fwd-held.txt" | cut -c1-150
    # The same at N = 16384 / 32768 (93 / 90% of a copy at 32768 rows, >= 95% asked): a quarter to half a row held.
    timeout 200 python benchmarks/triton_fwd_probe.py --repeats 3 \
      --configs c4096w16k1h,c4096w16k2h,c4096w16k4h,c4096w8k2h,c4096w8k4h,c8192w16m2k1h \
      --shapes 32768x32768,32768x16384,4096x16384xfloat16 > "$out/triton-fwd-held-16k-32k.txt" 2>&1
    echo "Triton forward N = 16384 / 32768, held chunks: rc=$?"; grep -vE "^device" \
      "$out/triton-fwd-held-16k-32k.txt" | cut -c1-150
    # The resident Triton backward with the next row tile loaded into registers first (BwdConfig.prefetch, x):
    # 32768x256 (63% of the add, one 16-warp program per SM), and in place of the pipelined loop at M = 4096.
    timeout 200 python benchmarks/triton_bwd_probe.py --repeats 3 --shapes 32768x256 \
      --configs default+x,16x256w8p2,16x256w8p2x,16x256w16p1x,8x256w4p4x > "$out/triton-bwd-prefetch.txt" 2>&1
    timeout 200 python benchmarks/triton_bwd_probe.py --repeats 3 \
      --shapes 4096x4096xfloat16,4096x8192xfloat16,4095x5000xfloat16,32768x1024 --configs default+x \
      >> "$out/triton-bwd-prefetch.txt" 2>&1
    echo "Triton backward, prefetch: rc=$?"; grep -vE "^device|^compiled|^    _layernorm|^    _sum" \
      "$out/triton-bwd-prefetch.txt" | cut -c1-150
    ;;
  probes-f)
    # One short call (about 570 s at most) of the leads that decide defaults, for a session whose device time is
    # nearly spent: probes-d's staged statistics (RMSNorm and LayerNorm, with the GPU bit-identity test) and
    # probes-e's held chunks and Triton prefetch, fewer configs each.
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    timeout 100 python benchmarks/cutedsl_bwd_probe.py --rms --shapes 4096x8192xfp16,4096x8192xbf16 --only new,sst,fst \
      --repeat 2 > "$out/cutedsl-bwd-rms-staged-stats.txt" 2>&1
    echo "CuTeDSL RMSNorm backward: rc=$?"; grep -E "^[0-9]+x[0-9]+ " "$out/cutedsl-bwd-rms-staged-stats.txt"
    timeout 90 python -m pytest tests/layernorm/test_gpu.py -q -p no:cacheprovider -k "stages_give_the_same_bits" \
      > "$out/gpu-stages-tests.log" 2>&1
    echo "CuTeDSL staged backward tests: rc=$? $(tail -1 "$out/gpu-stages-tests.log")"
    timeout 100 python benchmarks/cutedsl_bwd_probe.py --shapes 4096x8192xfp16,4095x5000xfp16,4096x4096xfp16 \
      --only new,sst,fst --repeat 2 > "$out/cutedsl-bwd-ln-staged-stats.txt" 2>&1
    echo "CuTeDSL LayerNorm backward: rc=$?"; grep -E "^[0-9]+x[0-9]+ " "$out/cutedsl-bwd-ln-staged-stats.txt"
    timeout 110 python benchmarks/triton_fwd_probe.py --repeats 2 \
      --configs c8192w16p1h,c8192w16p1k2h,c4096w16p1k4h,c4096w8k4h --shapes 16384x131072,8192x262144 \
      > "$out/triton-fwd-held.txt" 2>&1
    echo "Triton wide forward, held chunks: rc=$?"; grep -vE "^device" "$out/triton-fwd-held.txt" | cut -c1-150
    timeout 80 python benchmarks/triton_fwd_probe.py --repeats 2 --configs c4096w16k1h,c4096w16k2h,c4096w8k4h,c8192w16m2k1h \
      --shapes 32768x32768,32768x16384 > "$out/triton-fwd-held-16k-32k.txt" 2>&1
    echo "Triton forward N = 16384 / 32768, held chunks: rc=$?"; grep -vE "^device" \
      "$out/triton-fwd-held-16k-32k.txt" | cut -c1-150
    timeout 60 python benchmarks/triton_bwd_probe.py --repeats 2 --shapes 32768x256 \
      --configs default+x,16x256w8p2x,16x256w16p1x > "$out/triton-bwd-prefetch.txt" 2>&1
    timeout 40 python benchmarks/triton_bwd_probe.py --repeats 2 --shapes 4096x4096xfloat16 --configs default+x \
      >> "$out/triton-bwd-prefetch.txt" 2>&1
    echo "Triton backward, prefetch: rc=$?"; grep -vE "^device|^compiled|^    _layernorm|^    _sum" \
      "$out/triton-bwd-prefetch.txt" | cut -c1-150
    ;;
  probes-g)
    # The seventeenth session's leads (one short call): the Triton forward at N = 16384 against torch.compile (97-98%
    # of a copy against our 93-95%): whole rows resident (16 / 32 warps), held chunks of 4096 / 8192; at N = 8192
    # (compile 98% against our 94-95% at 4096 rows): resident rows; then ncu on the Triton backward at 32768x256
    # (63% of the add; not waiting on its loads: sixteenth session).
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    # (First in this call: the Triton backward at N = 16384 with x and dy held in registers as loaded, an opt-in
    # BwdConfig.held of commit 63db6a0, `--configs default+h,1x16384w32p1h,1x16384w16p1hs2` at 4096x16384xfloat16 and
    # 32768x16384: 63-70% of the add against the default's 76-77%; removed after losing, h100-2026-12-07-h/probes-g/.)
    timeout 120 python benchmarks/triton_fwd_probe.py --repeats 2 --shapes 4096x16384xfloat16,32768x16384 \
      --configs r1x16384w16h,r1x16384w32h,c4096w8k3h,c4096w8k2h,c8192w16k1h,c8192w8h > "$out/triton-fwd-16384.txt" 2>&1
    echo "Triton forward N = 16384: rc=$?"; grep -vE "^device" "$out/triton-fwd-16384.txt" | cut -c1-150
    timeout 100 python benchmarks/triton_fwd_probe.py --repeats 2 --shapes 4096x8192xfloat16,4096x8192xbfloat16 \
      --configs r1x8192w8h,r1x8192w16h,r2x8192w16h,c4096w8h,c8192w16m2h > "$out/triton-fwd-8192.txt" 2>&1
    echo "Triton forward N = 8192: rc=$?"; grep -vE "^device" "$out/triton-fwd-8192.txt" | cut -c1-150
    timeout 150 ncu --clock-control none -k regex:_layernorm_bwd --launch-skip 3 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section MemoryWorkloadAnalysis \
      python benchmarks/ncu_step.py --shape 32768x256xbfloat16 --backend triton > "$out/ncu-triton-bwd-256.txt" 2>&1
    echo "ncu Triton backward 32768x256: rc=$?"; grep -E "Duration|DRAM Throughput|Memory Throughput|Achieved Occ|\
Theoretical Occ|Warp Cycles Per Issued|No Eligible|Registers Per|Stall|Block Size|Grid Size" \
      "$out/ncu-triton-bwd-256.txt" | head -20
    ;;
  probes-h)
    # The seventeenth session's leads for the next visit (one call): the Triton bf16 -> fp32 out forward at
    # 4096x16384 / 4096x8192 (90 / 93% of the variant's SOL against compile's 95 / 99%) over the tuner's candidates,
    # which now include two-row blocks and held chunks; the Triton forward at 32768x32768, the held two-row blocks
    # (default) against the old one-row 4096 chunks (c4096w16h), four samples (probe 94 against 84, bench 91
    # against 90); the rest of probes-d: the N = 8192 blocks at fewer rows, the small-M forward through the API (the
    # data-pattern probe's question, fp16 against bf16 in the CuTeDSL backward, was answered by staged_stats).
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    timeout 150 python benchmarks/triton_residual_probe.py --shapes 4096x16384,4096x8192 --dtype bfloat16 \
      --out-dtype float32 --two-row-and-held --top 8 > "$out/triton-fwd-out-fp32.txt" 2>&1
    echo "Triton forward, fp32 out: rc=$?"; grep -vE "^device|Error" "$out/triton-fwd-out-fp32.txt" | cut -c1-170
    timeout 90 python benchmarks/triton_fwd_probe.py --repeats 4 --shapes 32768x32768 --configs c4096w16h \
      > "$out/triton-fwd-32768.txt" 2>&1
    echo "Triton forward 32768x32768: rc=$?"; grep -vE "^device" "$out/triton-fwd-32768.txt" | cut -c1-150
    # The Triton backward at 4095x5000 fp16 runs at ~77% of the add against 87-91% at 4096² / 4096x8192 with the
    # same one-row 8192-lane tile (39% of its lanes masked, so fewer bytes in flight a stage): a deeper pipeline (4
    # stages, 98 KB of shared memory), 32 warps (64 registers), and the row as a 4096 head + a 1024 tail
    # (BwdConfig.tail_n, seventeenth session: 99 registers against 128, 41 KB of shared memory at 3 stages against 65)
    # with 3-5 stages. Two-row tiles spill (216-272 bytes padded, 64-160 as head + tail).
    timeout 150 python benchmarks/triton_bwd_probe.py --repeats 2 --shapes 4095x5000xfloat16 \
      --configs 1x8192w16p1s4,1x8192w32p1s3,1x4096w16p1t1024s3,1x4096w16p1t1024s5,1x4096w32p1t1024s4 \
      > "$out/triton-bwd-5000.txt" 2>&1
    timeout 90 python benchmarks/triton_bwd_probe.py --repeats 2 --shapes 4096x6144xfloat16 \
      --configs 1x4096w16p1t2048s3,1x4096w16p1t2048s4 >> "$out/triton-bwd-5000.txt" 2>&1
    echo "Triton backward 4095x5000: rc=$?"; grep -vE "^device|^compiled|^    _" "$out/triton-bwd-5000.txt" | cut -c1-150
    # The CuTeDSL backward at N = 131072 (forward+backward 83%, >= 85% asked): its 16-CTA clusters fit 7 at once (112
    # of 132 SMs); 8-CTA clusters of 64 bytes a thread with w and dw/db in shared memory ("64Bs": 128 registers, no
    # spills) fit 16 (128 SMs).
    timeout 120 python benchmarks/cutedsl_bwd_probe.py --shapes 16384x131072xbf16 --only new,64Bs --repeat 2 \
      > "$out/cutedsl-bwd-131072.txt" 2>&1
    echo "CuTeDSL backward 16384x131072: rc=$?"; grep -E "^[0-9]+x[0-9]+ " "$out/cutedsl-bwd-131072.txt"
    # Where the Triton backward at 32768x256 waits (probes-g: latency-bound, 25% occupancy): every stall reason and
    # the source lines that stall most.
    timeout 150 ncu --clock-control none -k regex:_layernorm_bwd --launch-skip 3 --launch-count 1 \
      --section WarpStateStats --section SourceCounters --print-details all \
      python benchmarks/ncu_step.py --shape 32768x256xbfloat16 --backend triton > "$out/ncu-triton-bwd-256-stalls.txt" 2>&1
    echo "ncu Triton backward 32768x256, stalls: rc=$?"; grep -iE "stall|Warp Cycles" \
      "$out/ncu-triton-bwd-256-stalls.txt" | head -24
    timeout 90 python benchmarks/triton_fwd_probe.py --repeats 2 --api \
      --shapes 128x4096,512x8192xfloat16,1024x8192xfloat16,2048x8192 > "$out/triton-fwd-small-m.txt" 2>&1
    echo "Triton forward, fewer rows and the API path: rc=$?"; grep -vE "^device" "$out/triton-fwd-small-m.txt" \
      | cut -c1-150
    ;;
  probes-i)
    # The eighteenth session's changes and leads (one call): the GPU tests of the new defaults (the CuTeDSL backward
    # at N = 131072 16-bit in 8-CTA clusters, the Triton fp32-out forward blocks at (4096, 16384]); the fp32-out
    # feature bench; ragged clustered rows (N = 139264, 200000 bf16: the default halves its cluster to 4 CTAs of
    # 144-208 bytes of x a thread) against the fewest CTAs that cover them, clusters of any size ("fitc": a probe
    # variant then, the default since, and removed from the probes; this part now times the default alone).
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    timeout 200 python -m pytest tests/layernorm -q -n "${WORKERS:-8}" -p no:cacheprovider -rfEs \
      -k "wider_out or two_row_blocks or wide_backward or 131072 or out_dtype" > "$out/gpu-tests-i.log" 2>&1
    echo "tests: rc=$? $(tail -1 "$out/gpu-tests-i.log")"
    grep -E "^(FAILED|ERROR)" "$out/gpu-tests-i.log" | cut -c1-200 | head -20
    timeout 110 python -m vibe_kernels.layernorm.bench --out-dtype float32 --dtype bfloat16 --shapes seed \
      --no-host-overhead --json "$out/bench-layernorm-out-fp32.json" > "$out/bench-layernorm-out-fp32.txt" \
      2> "$out/probes-i.err"
    echo "bench out fp32: rc=$?"; grep -E "^\| +[0-9]+ \|" "$out/bench-layernorm-out-fp32.txt" | cut -c1-150
    timeout 200 python benchmarks/cutedsl_bwd_probe.py --shapes 16384x36864xbf16,8192x139264xbf16,8192x151936xbf16,8192x200000xbf16 --only new,fitc \
      --repeat 2 > "$out/cutedsl-bwd-ragged.txt" 2>> "$out/probes-i.err"
    echo "CuTeDSL backward, ragged wide rows: rc=$?"; grep -E "^[0-9]+x[0-9]+ " "$out/cutedsl-bwd-ragged.txt"
    timeout 120 python benchmarks/cutedsl_fwd_probe.py --shapes 16384x36864,8192x139264,8192x151936,8192x200000 --only fitc \
      > "$out/cutedsl-fwd-ragged.txt" 2>> "$out/probes-i.err"
    echo "CuTeDSL forward, ragged wide rows: rc=$?"; cut -c1-400 "$out/cutedsl-fwd-ragged.txt" | tail -5
    tail -5 "$out/probes-i.err"
    ;;
  probes-j)
    # The fitted clusters for ragged rows (config._row_tiling, eighteenth session): the GPU tests of test_gpu.py (its
    # shapes now include 139264 bf16 and 36864 fp16), the new defaults against the probes' variants at the shapes
    # probes-i measured, and the 3-CTA persistent forward at 36864 against one cluster a row ("per-row").
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    timeout 250 python -m pytest tests/layernorm/test_gpu.py -q -n "${WORKERS:-8}" -p no:cacheprovider -rfEs \
      > "$out/gpu-tests-j.log" 2>&1
    echo "tests: rc=$? $(tail -1 "$out/gpu-tests-j.log")"
    grep -E "^(FAILED|ERROR)" "$out/gpu-tests-j.log" | cut -c1-200 | head -20
    timeout 150 python benchmarks/cutedsl_bwd_probe.py --shapes 16384x36864xbf16,8192x139264xbf16,8192x151936xbf16,8192x200000xbf16 \
      --only new,64B --repeat 2 > "$out/cutedsl-bwd-fitted.txt" 2>&1
    echo "CuTeDSL backward, fitted clusters: rc=$?"; grep -E "^[0-9]+x[0-9]+ " "$out/cutedsl-bwd-fitted.txt" | tail -16
    timeout 150 python benchmarks/cutedsl_fwd_probe.py --shapes 16384x36864,8192x139264,8192x151936,8192x200000 \
      --only rows2,per-row,fitc,late32,t1024late,late+2cta > "$out/cutedsl-fwd-fitted.txt" 2>&1
    echo "CuTeDSL forward, fitted clusters: rc=$?"; cut -c1-400 "$out/cutedsl-fwd-fitted.txt" | tail -5
    ;;
  probes-k)
    # The nineteenth session's leads: the ragged clustered forward (fitted 12-13-CTA clusters: 30-35% of a copy) in
    # 8-CTA clusters of more bytes a thread ("c8": 127 registers, no spills at 139264 / 151936; 200000 spills), and
    # the 36864 forward's new default (one 3-CTA cluster a row, not persistent) against the persistent kernel.
    # First the memory-growth check that failed on the nineteenth session's H200 run (8192 B more allocated after
    # 10,000 CuTeDSL calls), alone: on growth it names the allocation sites of the blocks that stayed.
    timeout 120 python -m pytest tests/layernorm/test_reliability_gpu.py -v -p no:cacheprovider -rfEs -k no_growth \
      > "$out/gpu-tests-no-growth.log" 2>&1
    echo "no-growth check: rc=$? $(tail -1 "$out/gpu-tests-no-growth.log")"; grep -m3 "grew by" "$out/gpu-tests-no-growth.log"
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    timeout 150 python benchmarks/cutedsl_fwd_probe.py --shapes 16384x36864,8192x139264,8192x151936,8192x200000 \
      --only c8,persist > "$out/cutedsl-fwd-ragged-c8.txt" 2>&1
    echo "CuTeDSL forward, ragged rows in 8-CTA clusters: rc=$?"; cut -c1-400 "$out/cutedsl-fwd-ragged-c8.txt" | tail -5
    ;;
  probes-m)
    # The twentieth session's leads. The ragged clustered forward in clusters of at most 8 CTAs: "c8" (512 threads,
    # more bytes a thread) read 49 / 51% of a copy at 139264 / 151936 bf16 (5 vectors a thread) against the fitted
    # 12-13-CTA clusters' 31%, and 14% at 200000 (7 vectors: spills); here 6 vectors (180000 bf16), fp32 rows (5 and 7
    # vectors of 4 values), and 1024-thread CTAs ("c8t1024"). Then the Triton fp32-out forward at the edges of its
    # two-row rule (4096x6144 / 12288).
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    timeout 200 python benchmarks/cutedsl_fwd_probe.py \
      --shapes 8192x139264,8192x151936,8192x180000,8192x200000,8192x75000xfloat32,8192x100000xfloat32 \
      --only c8,c8t1024 > "$out/cutedsl-fwd-c8.txt" 2>&1
    echo "CuTeDSL forward, clusters of at most 8: rc=$?"; cut -c1-330 "$out/cutedsl-fwd-c8.txt" | tail -7
    timeout 150 python benchmarks/triton_residual_probe.py --shapes 4096x6144,4096x12288 --dtype bfloat16 \
      --out-dtype float32 --two-row-and-held --top 4 > "$out/triton-fwd-out-fp32-edges.txt" 2>&1
    echo "Triton forward, fp32 out: rc=$?"; grep -vE "^device|Error" "$out/triton-fwd-out-fp32-edges.txt" | cut -c1-170
    ;;
  probes-n)
    # The twentieth session's ragged forward rule (clusters of at most 8 CTAs of 5 vectors; weight and bias early
    # where that needs more): its GPU tests (and the staged residual backward's), then timed against the fitted clusters it replaced ("fitted"), and the
    # "previous" variant (weight and bias early). The Triton fp32-out forward between 8192 and 16384 (4096x12288:
    # the two-row default 90% against one-row held chunks 94%, one sample each), two samples.
    timeout 200 python -m pytest tests/layernorm/test_gpu.py -q -p no:cacheprovider -rfEs \
      -k "151936 or 180000 or residual_backward_stages" > "$out/gpu-tests-ragged.log" 2>&1
    echo "GPU tests, ragged wide rows and the staged residual backward: rc=$? $(tail -1 "$out/gpu-tests-ragged.log")"
    # The fused residual's backward staged through shared memory (an opt-in; the residual default has neither
    # prefetch nor stages: the register prefetch spills there), % of a same-bytes copy.
    timeout 120 python benchmarks/cutedsl_bwd_probe.py --residual --repeat 2 \
      --shapes 4096x4096xfp16,4096x8192xfp16,4095x5000xfp16,32768x4096xbf16,4096x4096xfp32 \
      > "$out/cutedsl-bwd-residual-staged.txt" 2>&1
    echo "CuTeDSL residual backward, staged: rc=$?"; grep -A40 "^shape" "$out/cutedsl-bwd-residual-staged.txt"
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    timeout 200 python benchmarks/cutedsl_fwd_probe.py \
      --shapes 8192x139264,8192x151936,8192x163840,8192x180000,8192x200000,4096x139264xfloat16 \
      --only fitted > "$out/cutedsl-fwd-eight.txt" 2>&1
    echo "CuTeDSL forward, ragged rule: rc=$?"; cut -c1-330 "$out/cutedsl-fwd-eight.txt" | tail -6
    for sample in 1 2; do
      timeout 100 python benchmarks/triton_residual_probe.py --shapes 4096x10240,4096x12288,4096x14336 \
        --dtype bfloat16 --out-dtype float32 --two-row-and-held --top 3 >> "$out/triton-fwd-out-fp32-mid.txt" 2>&1
      echo "Triton forward, fp32 out, sample $sample: rc=$?"
    done
    grep -vE "^device|Error" "$out/triton-fwd-out-fp32-mid.txt" | cut -c1-150
    ;;
  probes-o)
    # The staged residual backward as the 16-bit default (twentieth session): the GPU tests of the fused residual
    # through the API on CuTeDSL and the staged bit-identity test.
    timeout 110 python -m pytest tests/layernorm/test_features_gpu.py tests/layernorm/test_gpu.py -q -n 8 \
      -p no:cacheprovider -rfEs -k "(residual and (cutedsl or auto)) or residual_backward_stages" \
      > "$out/gpu-tests-residual.log" 2>&1
    echo "GPU tests, fused residual: rc=$? $(tail -1 "$out/gpu-tests-residual.log")"
    # The ragged forward's 8-CTA clusters with weight and bias early ("previous": 53-60% of a copy against the
    # default's 49-54%, timed without statistics; ptxas spills 40-112 bytes there), timed with the statistics stored
    # (the training forward) and without.
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    for stats in --stats ""; do
      # shellcheck disable=SC2086
      timeout 100 python benchmarks/cutedsl_fwd_probe.py --shapes 8192x139264,8192x151936,8192x163840 \
        --only previous $stats >> "$out/cutedsl-fwd-eight-early.txt" 2>&1
      echo "CuTeDSL forward, 8-CTA clusters early ($stats): rc=$?"
    done
    grep -E "^[0-9]+x" "$out/cutedsl-fwd-eight-early.txt" | cut -c1-260
    ;;
  probes-p)
    # The twenty-first session's fp32 staged residual backward, with dy and dh in fp32 and in bf16 (8-byte cp.async.ca
    # copies beside x's 16-byte ones), against the unstaged kernel ("old"), two interleaved samples each.
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    for grad in "" bf16; do
      timeout 120 python benchmarks/cutedsl_bwd_probe.py --residual --shapes 4096x4096xfp32,8192x3072xfp32 \
        --only new,old --repeat 2 ${grad:+--grad-dtype $grad} >> "$out/cutedsl-bwd-residual-fp32.txt" 2>&1
      echo "CuTeDSL residual backward, fp32 x, grads ${grad:-fp32}: rc=$?"
    done
    grep -E "^[0-9]+x" "$out/cutedsl-bwd-residual-fp32.txt" | cut -c1-200
    ;;
  probes-q)
    # The twenty-second session's lead: the CuTeDSL backward at the three forward+backward shapes still under 92% of
    # SOL (4095x5000 86, 4096² 91, 32768x256 89) with other row tilings than the default (cutedsl_bwd_probe.py
    # --tilings THREADSxVECSxROWS[sSTAGES][cCTAS]): fewer idle lanes at 5000 (the default's 512 x 2 vectors cover
    # 8192 columns; 640 x 1 and 320 x 2 cover 5120), one row a CTA and deeper stages at 4096, more warps at 256.
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks"
    for spec in "4095x5000xfp16 640x1x1,640x1x1s3,320x2x1,320x2x1s3,256x3x1" \
                "4096x4096xfp16 512x1x1,512x1x1s3,256x2x1c2,256x2x2s3" \
                "32768x256xbf16 16x2x32s2,32x1x16,32x1x16s2,32x1x16c2,16x2x16c2"; do
      set -- $spec
      timeout 150 python benchmarks/cutedsl_bwd_probe.py --shapes "$1" --only new --tilings "$2" --repeat 2 \
        >> "$out/cutedsl-bwd-tilings.txt" 2>&1
      echo "CuTeDSL backward tilings $1: rc=$?"
    done
    grep -E "^[0-9]+x[0-9]+ " "$out/cutedsl-bwd-tilings.txt" | grep -v "\[" | cut -c1-120
    ;;
  features)
    # One text and one stderr file for the five runs (the device tool returns at most 8 files a call).
    : > "$out/bench-features.txt"; : > "$out/bench-features.err"
    # The residual runs: x and r computed as in a model (the default), and as leaves (two .grad tensors).
    for spec in "rmsnorm::--op rmsnorm" "rmsnorm-residual::--op rmsnorm --residual" "layernorm-residual::--residual" \
                "rmsnorm-residual-leaves::--op rmsnorm --residual --residual-inputs leaves" \
                "layernorm-out-fp32::--out-dtype float32 --dtype bfloat16"; do
      name=${spec%%::*}; args=${spec#*::}
      echo "== $name ($args)" | tee -a "$out/bench-features.txt" >> "$out/bench-features.err"
      # shellcheck disable=SC2086
      timeout 110 python -m vibe_kernels.layernorm.bench $args --shapes seed --no-host-overhead \
        --json "$out/bench-$name.json" > "$out/bench-$name.part" 2>> "$out/bench-features.err"
      echo "== $name: rc=$?"
      cat "$out/bench-$name.part" >> "$out/bench-features.txt"
      grep -E "^\| +[0-9]+ \||^###|^\| [A-Z]" "$out/bench-$name.part" | cut -c1-170 | tail -14
      rm -f "$out/bench-$name.part"
    done
    ;;
esac
