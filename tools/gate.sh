#!/usr/bin/env bash
# Regression gate of deqbench: BASE against HEAD with asv, exit non-zero on a regression.
#
#   tools/gate.sh [options] BASE HEAD           compare two commits (times and exact counts)
#   tools/gate.sh [options] --counts BASE HEAD  the exact counts alone (map evaluations,
#                                               iterations, allocations): any rise fails;
#                                               a noisy machine cannot move them (shared CI)
#   tools/gate.sh [options] --aa [BASE]         A/A: BASE against a commit on top of it that
#                                               adds a blank line to README.md (expect: exit 0)
#   tools/gate.sh [options] --inject [BASE]     BASE against a commit on top of it whose every
#                                               kernel gemm does 25% more work (tools/inject.py;
#                                               expect: exit 1, no count changed)
# options:
#   --bench REGEX   benchmarks to run (asv --bench; default: $DEFAULT_BENCH below)
#   --machine NAME  asv machine name (default: asv's, the host name)
#   --strict        exit 4 when the quiet check found the run NOISY, whatever it flagged
#   --no-quiet      no quiet check (no waiting for a quiet machine, no quiet line)
#   --dry-run       resolve the commits, check the injection applies, print the commands
#   -h, --help
# exit: 0 passed, 1 a regression (or a count that rose), 2 broken run or bad arguments,
#       3 the machine never got quiet, 4 NOISY with --strict.
#
# The timing modes run under the quiet check (`deqbench quiet`): they wait for a quiet
# machine (1-minute load at most 0.5, up to 10 minutes) and end with its summary line.
# Three checks:
# 1. `asv continuous --factor 1.10 --interleave-rounds`: a time (or any value) is flagged
#    when the median moved by more than 10% AND asv's Mann-Whitney U test on the samples
#    says p < 0.002. The quiet settings are the suite's own (benchmarks/common.py, Bench):
#    one call of >= ~10 ms per sample, 4 processes x 3-5 samples per commit, and
#    --interleave-rounds alternates BASE and HEAD processes so drifts hit both alike.
# 2. tools/gate_counts.py: every exact count (map evaluations, iterations,
#    allocations in compiled code) that rose at all, which a 10% factor would miss.
#    --counts runs only these benchmarks, one process per commit, with the time ratios
#    of the track_ sweeps skipped (DEQBENCH_COUNTS_ONLY=1).
# 3. Every case that check 1 flagged, either way, runs again in a fresh interleaved run
#    with twice the processes; a time counts only when both runs flag it the same way
#    and the confirming run's rounds, paired in the order they ran, agree (at least 7 of
#    8 on the flagged side, median beyond the factor); a ratio of times (efficiency)
#    only beyond 1.25 (tools/gate_confirm.py: why one run is not enough on a
#    shared machine).
#    An A/A run fails if anything is confirmed, either way.
#
# Results go to .asv/gate/ (copies of asv.conf.json with other results_dir), never into
# the committed results/asv/. numba's cache is .asv/gate/numba (NUMBA_CACHE_DIR, unless
# set): one folder per version of the kernel sources (deqbench/_jit.py), so asv's
# alternating reinstalls of BASE and HEAD compile each version once; the gate prints how
# many cache entries each run wrote. The throwaway commits of --aa / --inject are made in
# a temporary worktree and kept on the branches gate/aa and gate/inject (asv needs them
# to exist; delete with `git branch -D gate/aa gate/inject`).
set -euo pipefail
shopt -s inherit_errexit

# deqbench's own kernels; compile times (fresh-interpreter CPU seconds, a noisy track_
# with no samples) and the peers (other libraries) are left to `asv run`, and so are the
# peakmem_ values: asv's peak RSS of the whole process, setup and imports included, which
# moved from 887M to 226M for TrainMemory(10) between two runs of code that had not changed
# (cause not found). The gate judges memory by the track_*_peak_increase values (peak RSS
# reset just before the call, then read after it) and by the allocation counts.
DEFAULT_BENCH='^bench_(fixed_point|gradients|training|memory|theory)\.(?!.*\.peakmem_)'
FACTOR=1.10
CONFIRM_ROUNDS=8
CONFIRM_REPEAT=5  # a fixed number of samples per process: gate_confirm.py splits them by round

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gate.sh: $*" >&2; exit 2; }

self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
orig_args=("$@")
mode=compare bench=$DEFAULT_BENCH machine= dry=0 strict=0 quiet=1 positional=()
while (($#)); do
    case $1 in
        --aa) mode=aa ;;
        --inject) mode=inject ;;
        --counts) mode=counts ;;
        --strict) strict=1 ;;
        --no-quiet) quiet=0 ;;
        --bench) (($# >= 2)) || die "--bench needs a REGEX"; bench=$2; shift ;;
        --bench=*) bench=${1#--bench=} ;;
        --machine) (($# >= 2)) || die "--machine needs a NAME"; machine=$2; shift ;;
        --machine=*) machine=${1#--machine=} ;;
        --dry-run) dry=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) positional+=("$1") ;;
    esac
    shift
done

case $mode in
    compare | counts) ((${#positional[@]} == 2)) || die "give BASE and HEAD (see --help)" ;;
    *) ((${#positional[@]} <= 1)) || die "--$mode takes at most one commit, BASE" ;;
esac

cd "$(git rev-parse --show-toplevel)"
python=${PYTHON:-python}

commit_of() { git rev-parse --verify --quiet "$1^{commit}" || die "not a commit: $1"; }
base=$(commit_of "${positional[0]:-HEAD}")
[[ $mode == compare || $mode == counts ]] && commit_of "${positional[1]}" >/dev/null

# the timing modes run under the quiet check, this script again as its command (after the
# arguments are checked: a bad commit must not wait for a quiet machine)
if ((!dry && quiet)) && [[ $mode != counts && -z ${DEQBENCH_GATE_QUIET_RUN:-} ]]; then
    quiet_args=()
    ((strict)) && quiet_args+=(--strict)
    DEQBENCH_GATE_QUIET_RUN=1 exec "$python" -m deqbench.cli quiet "${quiet_args[@]}" -- \
        bash "$self" "${orig_args[@]}"
fi
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$PWD/.asv/gate/numba}
run() { if ((dry)); then printf '+ %q' "$1"; shift; printf ' %q' "$@"; echo; else "$@"; fi; }

throwaway() {  # throwaway <aa|inject>: a commit on top of $base; prints its hash
    local kind=$1 tree
    tree=$(mktemp -d)
    trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true; rm -rf "$tree"' RETURN
    git worktree add --quiet --detach "$tree" "$base" >&2
    if [[ $kind == aa ]]; then
        printf '\n' >>"$tree/README.md"
        msg="gate A/A: a blank line in README.md (changes nothing the benchmarks run)"
    else
        "$python" tools/inject.py "$tree" >&2
        git -C "$tree" add -A deqbench/_kernels >&2
        msg="gate injection: every kernel gemm does 25% more work (NOT FOR MERGE)"
    fi
    if ((dry)); then
        git -C "$tree" diff --stat >&2
        echo "$base"  # nothing committed in a dry run
        return
    fi
    git -C "$tree" -c user.name=gate -c user.email=gate@localhost commit --quiet -am "$msg" >&2
    git -C "$tree" rev-parse HEAD
    git branch --force "gate/$kind" "$(git -C "$tree" rev-parse HEAD)" >&2
}

case $mode in
    compare | counts) head=$(commit_of "${positional[1]}") ;;
    *) head=$(throwaway "$mode") ;;
esac
echo "gate: base $(git log -1 --format='%h %s' "$base")"
echo "gate: head $(git log -1 --format='%h %s' "$head")$( ((dry)) && [[ $mode != compare ]] && echo ' (dry run: the throwaway commit is not made)')"
if [[ $mode == counts ]]; then
    echo "gate: exact counts only, within --bench '$bench'"
else
    echo "gate: --bench '$bench', --factor $FACTOR"
fi

# copies of the configuration whose results stay out of the committed results/asv/: one
# for the first run, one for the confirming run (check 3), which must not mix its samples in
mkdir -p .asv/gate
conf=.asv/gate/asv.conf.json
confirm_conf=.asv/gate/confirm.conf.json
counts_conf=.asv/gate/counts.conf.json
"$python" - "$conf" "$confirm_conf" "$counts_conf" <<'EOF'
import json, os, sys
from asv import util
d = util.load_json("asv.conf.json", js_comments=True)
# asv resolves relative paths against the configuration's own folder: make them absolute
root = os.getcwd()
for key in ("repo", "benchmark_dir", "env_dir"):
    d[key] = os.path.join(root, d.get(key, "."))
d["html_dir"] = os.path.join(root, ".asv/gate/html")
for path, results in zip(sys.argv[1:], ("results", "confirm-results", "counts-results")):
    json.dump(dict(d, results_dir=os.path.join(root, ".asv/gate", results)), open(path, "w"),
              indent=2)
EOF

machine_args=()
[[ -n $machine ]] && machine_args=(--machine "$machine")

# cache_entries [NEWER-THAN]: numba cache entries (compiled kernels) of deqbench under
# NUMBA_CACHE_DIR, all or those written after the file NEWER-THAN
cache_entries() {
    local root=$NUMBA_CACHE_DIR/deqbench
    if [[ -d $root ]]; then find "$root" -name '*.nbc' ${1:+-newer "$1"} | wc -l; else echo 0; fi
}
cache_report() {  # cache_report WHAT MARK: one line on what the last asv run compiled
    local versions=0
    [[ -d $NUMBA_CACHE_DIR/deqbench ]] && versions=$(find "$NUMBA_CACHE_DIR/deqbench" \
        -name '*.nbc' -printf '%P\n' | cut -d/ -f1 | sort -u | wc -l)
    echo "gate: numba cache $NUMBA_CACHE_DIR: $versions kernel version(s)," \
         "$(cache_entries) compiled entries; $1 wrote $(cache_entries "$2")"
}

if [[ $mode == counts ]]; then
    # only the benchmarks whose unit is an exact count, one process per commit
    counts_regex=$("$python" tools/gate_counts.py --regex --within "$bench") \
        || die "no count benchmark within --bench '$bench'"
    run rm -rf .asv/gate/counts-results
    run asv --config "$counts_conf" machine --yes "${machine_args[@]}"
    commits=$PWD/.asv/gate/counts-commits.txt  # asv reads it from another folder
    printf '%s\n%s\n' "$base" "$head" >"$commits"
    mark=.asv/gate/counts.mark
    touch "$mark"
    if ((dry)); then
        run env DEQBENCH_COUNTS_ONLY=1 asv --config "$counts_conf" run --bench "$counts_regex" \
            -a rounds=1 -a repeat=1 --show-stderr "${machine_args[@]}" \
            HASHFILE:"$commits"
    else
        DEQBENCH_COUNTS_ONLY=1 asv --config "$counts_conf" run --bench "$counts_regex" \
            -a rounds=1 -a repeat=1 --show-stderr "${machine_args[@]}" \
            HASHFILE:"$commits" || true
        cache_report "the run" "$mark"
    fi
    status=0
    run "$python" tools/gate_counts.py --config "$counts_conf" "${machine_args[@]}" \
        "$base" "$head" || status=$?
    case $status in
        0) echo "gate: counts passed: no exact count rose$( ((dry)) && echo ' (dry run)')" ;;
        1) echo "gate: counts FAILED: an exact count rose (see the list above)" ;;
        *) echo "gate: counts BROKEN: nothing to compare (see asv's output above)"; status=2 ;;
    esac
    exit "$status"
fi

run asv --config "$conf" machine --yes "${machine_args[@]}"
mark=.asv/gate/first.mark
touch "$mark"

# compared FILE: asv's output in FILE holds a comparison (a table, or "not changed");
# asv continuous exits 1 for "worse" as for a broken run, so its status cannot say
compared() {
    grep -q -e '^| Change' -e 'NOT SIGNIFICANTLY CHANGED' "$1" \
        || die "asv continuous printed no comparison: see its output above"
}

status=0
first=.asv/gate/continuous.txt
if ((dry)); then
    run asv --config "$conf" continuous --factor "$FACTOR" --interleave-rounds --split \
        --bench "$bench" "${machine_args[@]}" "$base" "$head"
else
    asv --config "$conf" continuous --factor "$FACTOR" --interleave-rounds --split \
        --bench "$bench" "${machine_args[@]}" "$base" "$head" | tee "$first" || true
    compared "$first"
    cache_report "the first run" "$mark"
fi
run "$python" tools/gate_counts.py --config "$conf" "${machine_args[@]}" "$base" "$head" || status=1

# 3. Confirm: every case the first run flagged (either way) runs again, alone, in a fresh
#    interleaved run with $CONFIRM_ROUNDS processes per commit; only what that run flags
#    too is reported (tools/gate_confirm.py says why).
if ((dry)); then
    echo "+ (each case flagged above) asv --config $confirm_conf continuous --factor $FACTOR" \
         "--interleave-rounds --split -a rounds=$CONFIRM_ROUNDS -a repeat=$CONFIRM_REPEAT" \
         "--bench '^CASE\$' ... BASE HEAD"
    exit 0
fi
mapfile -t cases < <("$python" tools/gate_confirm.py "$first")
worse=0 better=0 failed=0
if ((${#cases[@]})); then
    echo "gate: the first run flagged ${#cases[@]} case(s); confirming each with" \
         "$CONFIRM_ROUNDS interleaved processes per commit"
    rm -rf .asv/gate/confirm-results
    bench_args=()
    for c in "${cases[@]}"; do bench_args+=(--bench "$c"); done
    asv --config "$confirm_conf" machine --yes "${machine_args[@]}" >/dev/null
    touch "$mark"
    asv --config "$confirm_conf" continuous --factor "$FACTOR" --interleave-rounds --split \
        -a rounds="$CONFIRM_ROUNDS" -a repeat="$CONFIRM_REPEAT" "${bench_args[@]}" \
        "${machine_args[@]}" "$base" "$head" \
        | tee .asv/gate/confirm.txt || true
    compared .asv/gate/confirm.txt
    cache_report "the confirming run (its reinstalls should find every kernel: 0)" "$mark"
    read -r worse better failed < <("$python" tools/gate_confirm.py "$first" \
        --confirmed-by .asv/gate/confirm.txt --factor "$FACTOR" --rounds "$CONFIRM_ROUNDS" \
        --paired .asv/gate/confirm-results "$base" "$head")
fi
echo "gate: flagged the same way by both runs: $worse worse, $better better, $failed failing in one commit only"
((worse + failed)) && status=1
[[ $mode == aa ]] && ((better)) && status=1
case $mode:$status in
    compare:0) echo "gate: passed" ;;
    compare:*) echo "gate: FAILED (see the tables above)" ;;
    aa:0) echo "gate: A/A passed: nothing flagged" ;;
    aa:*) echo "gate: A/A FAILED: a commit that changes nothing the benchmarks run was flagged (or the run broke)" ;;
    inject:0) echo "gate: injection NOT caught: the gate missed 25% more gemm work in every kernel" ;;
    inject:*) echo "gate: injection reported; check that the confirmed cases are slower (none faster) and that no count changed" ;;
esac
exit "$status"
