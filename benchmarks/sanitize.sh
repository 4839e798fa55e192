#!/usr/bin/env bash
# compute-sanitizer over every kernel variant of both backends (the cases: benchmarks/sanitize_cases.py --list).
#
#   source .gpu/env.sh          # first, on the GPU machine: makes CuTeDSL importable (else its cases are skipped)
#   bash benchmarks/sanitize.sh # memcheck, racecheck, initcheck; ~7-8 minutes on an H100
#
# Logs go to ${OUT:-/tmp/sanitize-out}/sanitize/: <tool>.sanitizer.log (compute-sanitizer's report) and
# <tool>.driver.log (one line per case, checked against layernorm_ref). One summary line per tool is printed with
# compute-sanitizer's "ERROR SUMMARY" count; the exit status is non-zero on any sanitizer error, failing case,
# timeout or missing report.
#
# Each tool runs its own case selection (see sanitize_cases.py), tier 0 first, and starts no new case once its
# budget is spent (the summary then says how many were not run):
#   memcheck  every case                                      MEMCHECK_BUDGET  (default 300 s)
#   racecheck one case per Triton config / CuTeDSL bucket, M=3 RACECHECK_BUDGET (default 100 s)
#   initcheck tier 0 + the persistent-grid cases              INITCHECK_BUDGET (default  80 s)
# Other knobs: TOOLS="memcheck racecheck initcheck", BACKENDS=triton,cutedsl, SANITIZER=compute-sanitizer,
# PYTHON=python, DRIVER_ARGS (extra driver arguments). A full memcheck pass may need its own device call:
#   TOOLS=memcheck MEMCHECK_BUDGET=480 bash benchmarks/sanitize.sh
set -uo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-/tmp/sanitize-out}/sanitize"
mkdir -p "$out"
tools="${TOOLS:-memcheck racecheck initcheck}"
backends="${BACKENDS:-triton,cutedsl}"
sanitizer="${SANITIZER:-compute-sanitizer}"
python="${PYTHON:-python}"
# Every torch allocation is its own cudaMalloc: an out-of-bounds access inside a cached block is then caught.
export PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! command -v "$sanitizer" > /dev/null 2>&1; then
  echo "sanitize: $sanitizer not found on PATH (it ships with the CUDA toolkit)"
  exit 2
fi

status=0
for tool in $tools; do
  case "$tool" in
    memcheck) budget="${MEMCHECK_BUDGET:-300}" ;;
    racecheck) budget="${RACECHECK_BUDGET:-100}" ;;
    initcheck) budget="${INITCHECK_BUDGET:-80}" ;;
    *) echo "sanitize: unknown tool $tool"; status=1; continue ;;
  esac
  if ! [[ "$budget" =~ ^[0-9]+$ ]]; then
    echo "sanitize: the $tool budget must be a whole number of seconds, got '$budget'"; status=1; continue
  fi
  report="$out/$tool.sanitizer.log"
  driver="$out/$tool.driver.log"
  rm -f "$report" "$driver"
  start=$(date +%s)
  # shellcheck disable=SC2086  # DRIVER_ARGS is a word list
  # --report-api-errors no: the first H100 run's only reports were 34 CUDA_ERROR_INVALID_VALUE results of
  # cuGetProcAddress_v2 (driver entry points probed by the CUDA libraries at start-up, outside any kernel), which
  # compute-sanitizer otherwise counts in its ERROR SUMMARY; memory errors, races and uninitialized reads still count.
  timeout "$((budget + 75))" "$sanitizer" --tool "$tool" --target-processes all --error-exitcode 86 \
    --report-api-errors no --print-limit 100 --log-file "$report" \
    "$python" benchmarks/sanitize_cases.py --tool "$tool" --budget "$budget" --backends "$backends" \
    ${DRIVER_ARGS:-} > "$driver" 2>&1
  rc=$?
  elapsed=$(( $(date +%s) - start ))

  # "========= ERROR SUMMARY: 3 errors" (one per process the sanitizer followed); racecheck adds hazard counts.
  # racecheck ends its report with "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)" instead.
  summaries=$(grep -cE "ERROR SUMMARY|RACECHECK SUMMARY" "$report" 2> /dev/null)
  summaries=${summaries:-0}
  errors=$(grep -hoE "ERROR SUMMARY: [0-9]+ error|\([0-9]+ errors," "$report" 2> /dev/null \
    | grep -oE "[0-9]+" | awk '{s += $1} END {print s + 0}')
  hazards=$(grep -hoE "RACECHECK SUMMARY: [0-9]+ hazard" "$report" 2> /dev/null | awk '{s += $3} END {print s + 0}')
  driver_line=$(grep -E "^sanitize_cases:" "$driver" 2> /dev/null | tail -1)
  failed_cases=$(grep -cE "^FAIL " "$driver" 2> /dev/null)
  failed_cases=${failed_cases:-0}

  verdict=ok
  notes=""
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict=FAIL; notes+=" timed-out-after-${elapsed}s"; fi
  if [ "$summaries" -eq 0 ]; then verdict=FAIL; notes+=" no-ERROR-SUMMARY-in-report"; fi
  if [ "$errors" -gt 0 ]; then verdict=FAIL; fi
  if [ "$failed_cases" -gt 0 ]; then verdict=FAIL; notes+=" ${failed_cases}-cases-off-reference"; fi
  if [ -z "$driver_line" ]; then verdict=FAIL; notes+=" driver-did-not-finish"; fi
  if [ "$rc" -ne 0 ] && [ "$verdict" = ok ]; then verdict=FAIL; notes+=" exit-status-$rc"; fi
  case "$driver_line" in *"skipped_budget=0 "*|"") ;; *) notes+=" (coverage incomplete: budget spent)" ;; esac
  [ "$verdict" = ok ] || status=1

  extra=""
  [ "$tool" = racecheck ] && extra=" hazards=$hazards"
  printf '%-9s %-4s ERROR SUMMARY: %s errors%s | %s | rc=%s %ss%s\n' "$tool" "$verdict" "$errors" "$extra" \
    "${driver_line#sanitize_cases: }" "$rc" "$elapsed" "$notes"
  if [ "$verdict" != ok ]; then
    # The first distinct error headlines, and the failing cases, to read without opening the logs.
    grep -E "^=+ (Invalid|Uninitialized|Error|Race|Program hit|Warning)" "$report" 2> /dev/null \
      | sed -E 's/0x[0-9a-f]+/0x../g' | sort | uniq -c | sort -rn | head -5 | sed 's/^/    /'
    grep -E "^FAIL " "$driver" 2> /dev/null | head -5 | cut -c1-200 | sed 's/^/    /'
  fi
done
echo "sanitize: logs in $out; exit $status"
exit $status
