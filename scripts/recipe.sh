#!/usr/bin/env bash
# Run a published VoxCeleb2 recipe from the train list to the EERs, in stages, as its authors run it
# (the experiments' comments give the sources and the published numbers):
#
#   bash scripts/recipe.sh RECIPE VOX2 VOX1 MUSAN RIRS [FROM_STAGE]
#
#   RECIPE  resnet34     WeSpeaker ResNet34        (experiments vox2_resnet34, vox2_resnet34_lm)
#           ecapa_c1024  WeSpeaker ECAPA C1024     (vox2_ecapa_c1024_wespeaker, vox2_ecapa_c1024_wespeaker_lm)
#           campplus     3D-Speaker CAM++          (vox2_campplus)
#   VOX2    VoxCeleb2 dev as wav/flac in VOX2/dev/wav/<speaker>/<video>/<utt> (speakerid prepare --convert-to);
#           its train list is VOX2/train_list.txt when that exists, else stage 0 writes one
#   VOX1    VoxCeleb1 with VOX1/wav/... and the cleaned lists veri_test2.txt, list_test_all2.txt, list_test_hard2.txt
#   MUSAN   MUSAN as distributed (noise/, speech/, music/);  RIRS  RIRS_NOISES as distributed
#   FROM_STAGE  start there (default 0); each stage reads only what earlier stages wrote under $WORK
#
# Stages:
#   0 prepare   the train list; for campplus also 3D-Speaker's 3 s-segment list and its real RIRs as mono files
#   1 train     the recipe's experiment, in $WORK/train (run again, it resumes from $WORK/train's last.pt)
#   2 average   the last N epoch checkpoints into $WORK/train/avg.pt: N = 10 for WeSpeaker (num_avg), 1 for CAM++
#               (3D-Speaker evaluates the last epoch); N = 1 writes the last epoch without its optimizer state
#   3 finetune  WeSpeaker's large-margin fine-tuning from $WORK/train/avg.pt (model and head), in $WORK/lm
#   4 average   the LM's last N = 1 epoch (their num_avg 1) as $WORK/lm/avg.pt
#   5 evaluate  every avg.pt on Vox1-O, Vox1-E and Vox1-H cleaned, cosine scoring (<model>_eval/*.json, replaced), with
#               the training set's mean embedding subtracted for the WeSpeaker recipes (as their score.sh)
#   6 asnorm    the same with AS-norm, top 300 of a cohort of the VoxCeleb2-dev speakers (WeSpeaker's scoring)
# CAM++ has no stages 3, 4 and 6 (3D-Speaker's recipe and published number have neither LM nor AS-norm).
#
# Environment:
#   WORK       output folder (default runs/recipes/RECIPE)
#   STOP_STAGE the last stage to run (default 6)
#   GPUS       training processes on this node (default 1; above 1 the training stages run under torchrun).
#              data.batch_size is the global batch, so the recipe's LR holds for any number of GPUs.
#   OVERRIDES  extra Hydra overrides for the training stages, e.g. "trainer.precision=bf16 trainer.compile=true"
#   PYTHON     the interpreter (default python)
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
[[ $# -ge 5 && $# -le 6 ]] || usage
absolute() { [[ $1 == /* ]] && echo "$1" || echo "$PWD/$1"; }
# A path as a Hydra override value: quoted, so that a ',' (a sweep), '=' or space in it stays part of the path.
hydra_path() { printf "'%s'" "${1//\'/\\\'}"; }
recipe=$1 from_stage=${6:-0}
vox2=$(absolute "$2") vox1=$(absolute "$3") musan=$(absolute "$4") rirs=$(absolute "$5")
stop_stage=${STOP_STAGE:-6}
[[ $from_stage =~ ^[0-6]$ ]] || { echo "error: FROM_STAGE must be 0 to 6, got '$from_stage'" >&2; exit 2; }
[[ $stop_stage =~ ^[0-6]$ ]] || { echo "error: STOP_STAGE must be 0 to 6, got '$stop_stage'" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python}
gpus=${GPUS:-1}
read -r -a extra <<< "${OVERRIDES:-}"

case $recipe in
    resnet34)    experiment=vox2_resnet34              lm_experiment=vox2_resnet34_lm              num_avg=10 asnorm_top_k=300 mean_sub=true ;;
    ecapa_c1024) experiment=vox2_ecapa_c1024_wespeaker lm_experiment=vox2_ecapa_c1024_wespeaker_lm num_avg=10 asnorm_top_k=300 mean_sub=true ;;
    campplus)    experiment=vox2_campplus              lm_experiment=""                            num_avg=1  asnorm_top_k="" mean_sub=false ;;
    *) echo "error: RECIPE must be resnet34, ecapa_c1024 or campplus, got '$recipe'" >&2; exit 2 ;;
esac
lm_num_avg=1  # WeSpeaker run.sh stage 9: --num_avg 1
work=$(mkdir -p "${WORK:-runs/recipes/$recipe}" && cd "${WORK:-runs/recipes/$recipe}" && pwd)

train_root=$vox2/dev/wav
train_list=$vox2/train_list.txt
[[ -f $train_list ]] || train_list=$work/train_list.txt
train_dir=$work/train
lm_dir=$work/lm

# Where each recipe's augmentation files are (see speakerid/configs/augment/{wespeaker,campplus}.yaml) and the
# list it trains on: CAM++ draws one crop per 3 s of audio (3D-Speaker's train.csv), the others one per utterance.
if [[ $recipe == campplus ]]; then
    musan_dir=$musan/noise rir_dir=$work/real_rirs fit_list=$work/train_list_3s.txt
else
    musan_dir=$musan rir_dir=$rirs fit_list=$train_list
fi

stage() { [[ $from_stage -le $1 && $1 -le $stop_stage ]]; }
log() { echo "== $(date '+%F %T') $recipe stage $*"; }

launch() {  # python or torchrun, with the arguments of train.py
    if [[ $gpus -gt 1 ]]; then
        "$python" -m torch.distributed.run --standalone --nproc_per_node="$gpus" "$repo/train.py" "$@"
    else
        "$python" "$repo/train.py" "$@"
    fi
}

train() {  # run folder, experiment, overrides...: resumes the run when the folder holds one
    local dir=$1 name=$2
    shift 2
    local resume=()
    [[ -f $dir/checkpoints/last.pt ]] && resume=("trainer.resume=$(hydra_path "$dir/checkpoints/last.pt")")
    launch "experiment=$name" "data.train_list=$(hydra_path "$fit_list")" \
        "data.train_root=$(hydra_path "$train_root")" "eval.dir=$(hydra_path "$vox1")" \
        "augment.musan_dir=$(hydra_path "$musan_dir")" "augment.rir_dir=$(hydra_path "$rir_dir")" \
        "hydra.run.dir=$(hydra_path "$dir")" "${resume[@]}" "$@" "${extra[@]}"
}

average() {  # run folder, N: the mean of its last N epoch checkpoints as <run>/avg.pt (N = 1: the last one)
    "$python" -m speakerid.cli.main average --overwrite --last "$2" --out "$1/avg.pt" "$1" || exit 1
}

evaluate() {  # overrides for every protocol...: each model on Vox1-O, E and H cleaned
    local model protocol
    for model in "$train_dir/avg.pt" ${lm_experiment:+"$lm_dir/avg.pt"}; do
        [[ -f $model ]] || { echo "error: $model is missing: run the stages before" >&2; exit 1; }
        for protocol in vox1_o vox1_e vox1_h; do
            "$python" -m speakerid.cli.main evaluate --overwrite --model "$model" "eval=$protocol" \
                "eval.dir=$(hydra_path "$vox1")" "$@"
        done
    done
}

cd "$repo"  # train.py, scripts/ and the speakerid package of this checkout

if stage 0; then
    log "0: prepare"
    if [[ ! -f $train_list ]]; then
        "$python" -m speakerid.cli.main prepare --root "$train_root" --out "$train_list"
    fi
    if [[ $recipe == campplus ]]; then
        # 3D-Speaker's train.csv (local/prepare_data_csv.py, seg_dur 3.0): one row per whole 3 s of an
        # utterance, at least one; each row is a random 3 s crop of the whole utterance.
        if [[ ! -f $fit_list ]]; then
            "$python" -m speakerid.cli.main prepare --list "$train_list" --root "$train_root" --out "$fit_list" \
                --segment-seconds 3
        fi
        # 3D-Speaker's RIRs (local/prepare_data.sh): the real ones of real_rirs_isotropic_noises/rir_list, first
        # channel; speakerid's RIR bank takes mono files.
        "$python" -m speakerid.cli.main prepare --real-rirs "$rirs" --out "$rir_dir" || exit 1
    fi
fi

if stage 1; then
    log "1: train $experiment in $train_dir"
    train "$train_dir" "$experiment"
fi

if stage 2; then
    log "2: average the last $num_avg checkpoints of $train_dir"
    average "$train_dir" "$num_avg"
fi

if [[ -n $lm_experiment ]] && stage 3; then
    log "3: large-margin fine-tuning $lm_experiment in $lm_dir"
    train "$lm_dir" "$lm_experiment" "trainer.init_from=$(hydra_path "$train_dir/avg.pt")"
fi

if [[ -n $lm_experiment ]] && stage 4; then
    log "4: the last $lm_num_avg checkpoint of $lm_dir"
    average "$lm_dir" "$lm_num_avg"
fi

# WeSpeaker scores with the mean embedding of the training set subtracted (score.sh cal_mean), 3D-Speaker without.
scoring=()
[[ $mean_sub == true ]] && scoring=(eval.mean_subtraction.enabled=true
                                   "eval.mean_subtraction.list=$(hydra_path "$train_list")"
                                   "eval.mean_subtraction.root=$(hydra_path "$train_root")")

if stage 5; then
    log "5: evaluate, cosine scoring${scoring:+, less the mean embedding of the training set}"
    evaluate "${scoring[@]}"
fi

if [[ -n $asnorm_top_k ]] && stage 6; then
    log "6: evaluate with AS-norm (top $asnorm_top_k, cohort: the speakers of $train_list)"
    evaluate "${scoring[@]}" eval.asnorm.enabled=true "eval.asnorm.top_k=$asnorm_top_k" \
        "eval.asnorm.cohort_list=$(hydra_path "$train_list")" "eval.asnorm.cohort_root=$(hydra_path "$train_root")"
fi

log "$from_stage to $stop_stage done (evaluations: $train_dir/avg_eval${lm_experiment:+, $lm_dir/avg_eval})"
