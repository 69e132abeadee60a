#!/usr/bin/env bash
# A rank killed in the middle of a data-parallel char_lm run: mpiexec ends the whole job
# with a non-zero status and a message that names the rank, and the checkpoint that
# rank 0 wrote last is intact: the run resumes from it on one rank.
#   check_rank_failure.sh MPIEXEC NP_FLAG "MPI FLAGS" CHAR_LM CHECKPOINT
set -uo pipefail
mpiexec=$1 np_flag=$2 mpi_flags=$3 program=$4 checkpoint=$5
fail() { echo "check_rank_failure: $*" >&2; cat "$log" >&2; exit 1; }

args=(--steps 100000 --layers 1 --dim 16 --ctx 16 --batch 4 --eval-every 2 --eval-batches 1 --generate 0
      --checkpoint "$checkpoint")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rm -f "$checkpoint"
# shellcheck disable=SC2086  # the flags are words
"$mpiexec" "$np_flag" 2 $mpi_flags "$program" "${args[@]}" >"$log" 2>&1 &
job=$!
for _ in $(seq 300); do [[ -s $checkpoint ]] && break; sleep 0.1; done
[[ -s $checkpoint ]] || fail "no checkpoint after 30 s"
sleep 0.5  # more steps and checkpoints

victim=""
for pid in $(pgrep -P "$job"); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1\|PMI_RANK=1'; then victim=$pid; fi
done
[[ -n $victim ]] || fail "no rank 1 among the children of $mpiexec ($(pgrep -P "$job" | tr '\n' ' '))"
kill -9 "$victim"
for _ in $(seq 300); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$job" 2>/dev/null; then
    kill -9 "$job"
    fail "$mpiexec still runs 30 s after rank 1 died"
fi
wait "$job"
status=$?
((status != 0)) || fail "$mpiexec exited with status 0 after rank 1 died"
grep -qi 'rank 1' "$log" || fail "the output does not name rank 1"
echo "rank 1 killed: $mpiexec exited with status $status: $(grep -i -m1 'rank 1' "$log")"

# shellcheck disable=SC2086
"$mpiexec" "$np_flag" 1 $mpi_flags "$program" "${args[@]}" --resume "$checkpoint" --time-limit 1e-9 >"$log" 2>&1 ||
    fail "resuming $checkpoint failed"
grep -q "^resumed $checkpoint at step" "$log" || fail "no 'resumed' line"
grep -m1 "^resumed" "$log"
