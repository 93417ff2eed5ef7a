#!/usr/bin/env bash
# One command that proves metarun on a GPU: the CUDA tests, the benchmark, and short real trainings on the
# Omniglot subsets (MAML fp32 and bf16 with the same seed and budget, ProtoNet), written up in OUT/report.md;
# on request, Omniglot's 5-alphabet challenge at GPU size (--phases challenge).
#
#   scripts/gpu_check.sh --out DIR [--data DIR] [--wheels DIR] [--device cuda|cpu] [--quick] [--phases LIST]
#                        [--bench-settings all|LIST] [--iterations N] [--train-minutes M] [--episodes N]
#                        [--tests-timeout S] [--bench-timeout S] [--train-timeout S]
#                        [--seeds N] [--challenge-timeout S]
#
#   --out DIR          report.md, bench.jsonl, each phase's log and each run's directory (runs/NAME)
#   --data DIR         holds images_background_small1.zip and images_background_small2.zip
#                      [${METARUN_DATA:-data}/omniglot]
#   --wheels DIR       install what is missing from these wheels only (scripts/gpu_wheels.sh fetches them);
#                      without it, pip fetches what is missing from the network
#   --device DEV       cuda, or cpu for a dry run [cuda]
#   --quick            tiny budgets: checks that the check runs (with --device cpu: about 2 minutes on 2 cores)
#   --phases LIST      any of tests,bench,train,challenge [tests,bench,train]; challenge trains
#                      experiment=omniglot_challenge_5alphabets_gpu with --seeds seeds, 4 at a time on the
#                      GPU (hydra/launcher=local), then scores them as one ensemble (eval.ensemble): a device
#                      call of its own, after the check
#   --bench-settings all|LIST
#                      the benchmark's settings (scripts/bench.py --settings), always with its evaluation and
#                      GPU-busy extras [the six it measured before, comparable with docs/benchmarks/h200.jsonl:
#                      maml-omniglot-5w1s, maml-omniglot-20w1s, maml-miniimagenet-5w1s, imaml-omniglot-5w1s,
#                      protonet-omniglot-60w1s, protonet-miniimagenet-5w5s; quick: maml-omniglot-5w1s and
#                      protonet-omniglot-60w1s]. All 18 do not fit the bench phase's limit: the whole benchmark is
#                      `python scripts/bench.py --device cuda`, a device call of its own
#   --iterations N     training iterations per run, at most [1000; quick: 10]
#   --train-minutes M  wall-clock budget of each run's training (train.max_minutes) [0.6; quick: 0.5];
#                      MAML in bf16 has none: it makes as many iterations as MAML in fp32 made
#   --episodes N       meta-test episodes per run [600; quick: 10]
#   --tests-timeout S, --bench-timeout S, --train-timeout S
#                      limits of the CUDA tests, the benchmark and each training run with its evaluation;
#                      a phase past its limit is stopped and reported [200, 210, 100]
#   --seeds N          the challenge's runs [8; quick: 2]
#   --challenge-timeout S
#                      the limit of the challenge's training sweep, and of its ensemble's evaluation [480]
#
# Missing packages (scripts/gpu_wheels.txt) go to a temporary folder on PYTHONPATH; the repository is installed
# in editable mode when `import metarun.conf` fails. Every phase runs even when an earlier one failed; the exit
# status is 1 when any failed. The default budgets are sized for about 6 minutes on an H100 or H200.
set -uo pipefail

usage() { sed -n 's/^#   //p' "$0"; exit 0; }
die() { echo "gpu_check.sh: $*" >&2; exit 2; }

out="" data="${METARUN_DATA:-data}/omniglot" wheels="" device=cuda quick=false phases=tests,bench,train bench_settings=""
iterations="" minutes="" episodes="" tests_timeout=200 bench_timeout=210 train_timeout=100 seeds=""
challenge_timeout=480
while (($#)); do
    (($# >= 2)) || [[ $1 == --quick || $1 == -h || $1 == --help ]] || die "$1 needs a value"
    case $1 in
        --out) out=$2 ;;
        --data) data=$2 ;;
        --wheels) wheels=$2 ;;
        --device) device=$2 ;;
        --quick) quick=true; shift; continue ;;
        --phases) phases=$2 ;;
        --bench-settings) bench_settings=$2 ;;
        --iterations) iterations=$2 ;;
        --train-minutes) minutes=$2 ;;
        --episodes) episodes=$2 ;;
        --tests-timeout) tests_timeout=$2 ;;
        --bench-timeout) bench_timeout=$2 ;;
        --train-timeout) train_timeout=$2 ;;
        --seeds) seeds=$2 ;;
        --challenge-timeout) challenge_timeout=$2 ;;
        -h|--help) usage ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
done
[[ -n $out ]] || die "--out DIR is required: the folder for report.md and the logs"
[[ $device == cuda || $device == cpu ]] || die "--device $device is not cuda or cpu"
for name in ${phases//,/ }; do
    [[ $name == tests || $name == bench || $name == train || $name == challenge ]] ||
        die "--phases: $name is not one of tests, bench, train, challenge"
done
[[ -z $seeds || $seeds =~ ^[1-9][0-9]*$ ]] || die "--seeds $seeds is not a positive whole number of runs"

for subset in images_background_small1.zip images_background_small2.zip; do
    [[ -f $data/$subset ]] || die "$data/$subset does not exist; pass --data DIR, the folder of the Omniglot subsets"
done
[[ -z $wheels || -d $wheels ]] || die "--wheels $wheels is not a folder; fetch them with scripts/gpu_wheels.sh $wheels"
if $quick; then
    iterations=${iterations:-10} minutes=${minutes:-0.5} episodes=${episodes:-10} seeds=${seeds:-2}
    # a smoke test of the script: one MAML and one ProtoNet setting
    bench_settings=${bench_settings:-maml-omniglot-5w1s,protonet-omniglot-60w1s}
else
    iterations=${iterations:-1000} minutes=${minutes:-0.6} episodes=${episodes:-600} seeds=${seeds:-8}
    # the settings this check measured before (docs/benchmarks/h200.jsonl has all but iMAML's), so checks compare
    bench_settings=${bench_settings:-maml-omniglot-5w1s,maml-omniglot-20w1s,maml-miniimagenet-5w1s,imaml-omniglot-5w1s,protonet-omniglot-60w1s,protonet-miniimagenet-5w5s}
fi

root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out" && out=$(cd "$out" && pwd) && data=$(cd "$data" && pwd) || die "cannot use --out $out"
[[ -z $wheels ]] || wheels=$(cd "$wheels" && pwd)
cd "$root" || exit 2
# a rerun into the same folder starts afresh: no run resumes, no old figure is reported
rm -rf "$out/runs" "$out/check.json" "$out/phases.jsonl" "$out/bench.jsonl" "$out/report.md" "$out/check.log"
# packages installed here, and the decoded dataset, live only as long as the check
work=$(mktemp -d "${TMPDIR:-/tmp}/metarun-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
failed=0

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$out/check.log"; }

report() {  # (re)write OUT/report.md; after every phase, so a check stopped from outside leaves its report
    python3 scripts/gpu_report.py "$out" "$@" >>"$out/check.log" 2>&1 || { failed=1; log "writing the report failed"; }
}

record() {  # record NAME EXIT SECONDS LIMIT: one line of phases.jsonl, then the report
    printf '{"phase": "%s", "exit": %d, "seconds": %d, "limit": %d}\n' "$1" "$2" "$3" "$4" >>"$out/phases.jsonl"
    if (($2)); then failed=1; log "$1: FAILED (exit $2) after $3 s; see $out/$1.log"; else log "$1: ok after $3 s"; fi
    report
}

phase() {  # phase NAME LIMIT COMMAND...: run COMMAND for at most LIMIT seconds, its output in OUT/NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    log "$name: started (limit ${limit} s)"
    { echo "\$ $*"; timeout -k 10 "$limit" "$@"; } >"$out/$name.log" 2>&1
    record "$name" $? $((SECONDS - start)) "$limit"
}

train_run() {  # train_run NAME OVERRIDE...: a paper preset and OVERRIDEs on the subsets → OUT/runs/NAME
    local name=$1
    shift
    phase "$name" "$train_timeout" python3 -m metarun.runner.cli "$@" "${subsets[@]}" "${budget[@]}" \
        "hydra.run.dir=$out/runs/$name"
}

iterations_of() {  # iterations_of NAME: the iterations run NAME made, from its results.json
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["iterations"])' "$out/runs/$1/results.json" \
        2>/dev/null
}

set_up() {  # install the packages of scripts/gpu_wheels.txt that are missing, then metarun; check the device
    local module requirement kind name wheel requirements=()
    while read -r module requirement kind; do
        [[ -z $module || $module == \#* ]] && continue
        # present, found without importing it (higher and torchopt would load torch each time)
        python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" && continue
        if [[ -z $wheels ]]; then
            requirements+=("$requirement")
            continue
        fi
        name=${requirement%%[=<>]*}
        wheel=$(compgen -G "$wheels/${name//-/_}-*.whl" | head -n 1)
        if [[ -n $wheel ]]; then requirements+=("$wheel"); else echo "no wheel of $name in $wheels"; fi
    done <scripts/gpu_wheels.txt
    if ((${#requirements[@]})); then
        echo "installing into $work/site: ${requirements[*]}"
        # --no-deps: the list is complete, and pip must never replace the node's own CUDA torch
        python3 -m pip install -q --no-deps --no-compile --no-cache-dir --target "$work/site" \
            ${wheels:+--no-index} "${requirements[@]}" || return
    fi
    if ! python3 -c "import metarun.conf" 2>/dev/null; then
        echo "installing metarun (editable: conf/ becomes the package metarun.conf)"
        python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || return
    fi
    python3 -c "import hydra, omegaconf, metarun.conf; print('hydra, omegaconf and metarun.conf import')" || return
    [[ $device == cpu ]] || python3 -c "import torch; assert torch.cuda.is_available(), \
'no CUDA device is visible to torch; the dry run is --device cpu'; print(torch.cuda.get_device_name())"
}

log "metarun GPU check: --device $device$($quick && echo ' --quick'), phases $phases → $out"
report --start --device "$device" --phases "$phases" $($quick && echo --quick)
start=$SECONDS
set_up >"$out/setup.log" 2>&1
ready=$?
record setup "$ready" $((SECONDS - start)) 0
if ((ready)); then
    log "the set-up failed, so nothing else ran"
else
    if [[ ,$phases, == *,tests,* ]]; then
        # the files that hold CUDA tests, not all of tests/: some import optional packages (wandb) a GPU node lacks
        mapfile -t cuda_tests < <(grep -rl --include='test_*.py' 'pytest.mark.cuda' tests | sort)
        phase tests "$tests_timeout" python3 -m pytest -m cuda -p no:cacheprovider -q "${cuda_tests[@]}"
    fi
    if [[ ,$phases, == *,bench,* ]]; then
        bench=(--device "$device" --out "$out/bench.jsonl")
        [[ $bench_settings == all ]] || bench+=(--settings "$bench_settings")
        $quick && bench+=(--quick --threads 1)
        phase bench "$bench_timeout" python3 scripts/bench.py "${bench[@]}"
    fi
    if [[ ,$phases, == *,train,* ]]; then
        # meta-train on small1's alphabets (rotations as classes), meta-test on the alphabets only small2 has;
        # validation runs once, at the end, so no checkpoint is chosen on those test alphabets
        subsets=("dataset.root=$data" "dataset.cache_dir=$work/cache" dataset.split=folders
                 "dataset.train=[images_background_small1.zip]" "dataset.val=[images_background_small2.zip]"
                 "dataset.test=[images_background_small2.zip]" dataset.rotations=true)
        budget=(train.log_every=50 train.val_every=1000000 train.checkpoint_every=1000000 "eval.episodes=$episodes"
                seed=0 "hardware.device=$device" hardware.task_parallel=vmap logger.console=false)
        $quick && budget+=(model.width=16 eval.val_episodes=10 hardware.num_threads=1)
        maml=(experiment=maml_omniglot_5w1s)
        $quick && maml+=(train.meta_batch_size=4)
        train_run maml-fp32 "${maml[@]}" hardware.precision=fp32 "train.iterations=$iterations" \
            "train.max_minutes=$minutes"
        # bf16 makes as many updates as fp32 made before its wall-clock budget ran out: only the precision differs
        if fp32_iterations=$(iterations_of maml-fp32); then
            train_run maml-bf16 "${maml[@]}" hardware.precision=bf16 "train.iterations=$fp32_iterations" \
                train.max_minutes=null
        else
            train_run maml-bf16 "${maml[@]}" hardware.precision=bf16 "train.iterations=$iterations" \
                "train.max_minutes=$minutes"
        fi
        train_run protonet experiment=protonet_omniglot_5w1s "train.iterations=$iterations" "train.max_minutes=$minutes"
    fi
    if [[ ,$phases, == *,challenge,* ]]; then
        # the preset's own data (small1 to train, the alphabets only small2 has to test) and budget; quick: tiny
        challenge=("dataset.root=$data" "dataset.cache_dir=$work/cache" "hardware.device=$device" logger.console=false)
        $quick && challenge+=(train.iterations=10 train.val_every=10 model.width=16 eval.episodes=10
                              eval.val_episodes=10 eval.support_copies=1 hardware.num_threads=1)
        sweep=$out/runs/challenge
        phase challenge "$challenge_timeout" python3 -m metarun.runner.cli -m \
            experiment=omniglot_challenge_5alphabets_gpu "${challenge[@]}" "seed=$(seq -s, 0 $((seeds - 1)))" \
            hydra/launcher=local hardware.jobs_per_gpu=4 "hydra.sweep.dir=$sweep" 'hydra.sweep.subdir=seed${seed}'
        phase challenge-ensemble "$challenge_timeout" python3 -m metarun.runner.cli mode=eval \
            "checkpoint=$sweep/seed0/checkpoints/best.pt" "eval.ensemble=[$sweep/*/checkpoints/best.pt]" \
            "hardware.device=$device" logger.console=false "hydra.run.dir=$out/runs/challenge-ensemble"
    fi
fi

log "report: $out/report.md"
cat "$out/report.md"
exit "$failed"
