# Rounds 23-25: settings of saescope's JumpReLU (and one of SAELens') tried in the head-to-head's setting
# (compare_sites.sh: the sha256-order 120,000-token store, width 4096, 245,760 tokens, batch 512,
# lr 3e-3, seed 0, 16 x 256 held-out tokens), saescope's JumpReLU alone at targets 14/32/64/96; the
# peers' numbers are those of runs/h2h_<site>, trained on the same rows. Matched-L0 tables in
# runs/v23/<name>/compare.md. Run from the repository with the virtual environment active:
#   bash experiments/h2h_variants.sh            # every row;  bash experiments/h2h_variants.sh mlp_f10  # one
set -e
STORE=${STORE:-runs/exp6/activations}
FREE=jumprelu.unit_decoder=false,jumprelu.init_norm=0.1,jumprelu.threshold_lr=10
FREE03=jumprelu.unit_decoder=false,jumprelu.init_norm=0.3,jumprelu.threshold_lr=3
# Rows name a site, the JumpReLU knobs (- for none) and other compare flags. Round 24's rows (r24_*) weaken
# the revival pull below target 64 (revive_power=1.5: a tenth of it at target 14).
R24=jumprelu.revive_power=1.5
# Round 25's rows (r25_*) are read by their weighted FVU (compare.md), at targets 32/64 (14/32 for att.6);
# the *_1ep rows train on a store where no row repeats, harvested first with
#   saescope harvest --sites res,mlp,att --layers 6 --tokens 266240 --shard-rows 20480 --out runs/exp7/activations
ONE_EPOCH="--store runs/exp7/activations"
BW05=$FREE03,jumprelu.bandwidth=0.05
FROM1=jumprelu.unit_decoder=false,jumprelu.init_norm=1.0,jumprelu.bandwidth=0.05
FROM05=jumprelu.unit_decoder=false,jumprelu.init_norm=0.5,jumprelu.threshold_lr=2,jumprelu.bandwidth=0.05
FROM03_T1=jumprelu.unit_decoder=false,jumprelu.init_norm=0.3,jumprelu.bandwidth=0.05
# Round 26's rows (r26_*), read by weighted FVU at targets 16/32/64: SAELens' JumpReLU recipe in saescope's
# code (free rows from 0.1, threshold 0.01, bandwidth 0.05, fixed lambda, no frequency penalty, revival or
# clipping), then the steered L0 penalty (saescope/saes/l0_penalty.py) from that start and from ours.
SL=jumprelu.unit_decoder=false,jumprelu.init_norm=0.1,jumprelu.init_l0=0,jumprelu.threshold_init=0.01,jumprelu.bandwidth=0.05,jumprelu.freq_coefficient=0,jumprelu.revive_coefficient=0,jumprelu.jolt_clip=0
LAMBDAS="--sweeps jumprelu=0.0003/0.001/0.003"
T3="--sweeps jumprelu=16/32/64"
STEER03=jumprelu.unit_decoder=false,jumprelu.init_norm=0.3,jumprelu.threshold_lr=3,jumprelu.bandwidth=0.05,jumprelu.l0_penalty=steered
# Round 27's rows (r27_*): the default (steered) JumpReLU on att.6 at target 64 with a small frequency penalty
# (freq_coefficient F charging above freq_target P), read by weighted FVU, KL and dense/dead latents.
ONE64="--sweeps jumprelu=64"
declare -A ROWS=(
  [r27_att_f003_10]="att.6 jumprelu.freq_coefficient=0.003,jumprelu.freq_target=0.1 $ONE64"
  [r27_att_f01_10]="att.6 jumprelu.freq_coefficient=0.01,jumprelu.freq_target=0.1 $ONE64"
  [r27_att_f003_05]="att.6 jumprelu.freq_coefficient=0.003 $ONE64"
  [r26_sl]="res.6 $SL,jumprelu.l0_penalty=l0 --adam-beta1 0.9 $LAMBDAS"
  [r26_sl_b0]="res.6 $SL,jumprelu.l0_penalty=l0 $LAMBDAS"
  [r26_slq]="res.6 $SL,jumprelu.l0_penalty=mean-quadratic $T3"
  [r26_sls]="res.6 $SL,jumprelu.l0_penalty=steered $T3"
  [r26_slt]="res.6 ${SL/jumprelu.init_l0=0,jumprelu.threshold_init=0.01,/},jumprelu.l0_penalty=steered,jumprelu.threshold_lr=3 $T3"
  [r26_fr_bare]="res.6 $STEER03,jumprelu.freq_coefficient=0,jumprelu.revive_coefficient=0,jumprelu.jolt_clip=0 $T3"
  [r26_fr_freq]="res.6 $STEER03,jumprelu.revive_coefficient=0,jumprelu.jolt_clip=0 $T3"
  [r26_new]="res.6 $STEER03,jumprelu.freq_coefficient=0 $T3"
  [r26_mlp_new]="mlp.6 $STEER03,jumprelu.freq_coefficient=0 $T3"
  [r26_att_new]="att.6 $STEER03,jumprelu.freq_coefficient=0 $T3"
  [lr6_t05]="res.6 jumprelu.threshold_lr=0.5 --lr 6e-3"
  [b09]="res.6 - --adam-beta1 0.9"
  [decay1]="res.6 - --lr-decay 1.0"
  [fr_i64]="res.6 $FREE,jumprelu.init_l0=64"
  [fr_i100]="res.6 $FREE,jumprelu.init_l0=100"
  [nofreq]="res.6 jumprelu.freq_coefficient=0"
  [res_f10]="res.6 jumprelu.freq_target=0.1"
  [noclipj]="res.6 jumprelu.jolt_clip=0"
  [norevive]="res.6 jumprelu.revive_coefficient=0"
  [revive1e4]="res.6 jumprelu.revive_coefficient=1e-4"
  [res_rv4_s1]="res.6 jumprelu.revive_coefficient=1e-4 --seed 1"
  [mlp_rv4]="mlp.6 jumprelu.revive_coefficient=1e-4"
  [mlp_rv4_s1]="mlp.6 jumprelu.revive_coefficient=1e-4 --seed 1"
  [att_rv4]="att.6 jumprelu.revive_coefficient=1e-4"
  [mlp_f10]="mlp.6 jumprelu.freq_target=0.1"
  [att_f10]="att.6 jumprelu.freq_target=0.1"
  [mlp_s1]="mlp.6 - --seed 1"
  [att_s1]="att.6 - --seed 1"
  [mlp_f10_s1]="mlp.6 jumprelu.freq_target=0.1 --seed 1"
  [r24_res]="res.6 $R24"
  [r24_res_s1]="res.6 $R24 --seed 1"
  [r24_mlp]="mlp.6 $R24"
  [r24_mlp_s1]="mlp.6 $R24 --seed 1"
  [r24_att]="att.6 $R24"
  [r24_att_s1]="att.6 $R24 --seed 1"
  [r24_free]="res.6 $R24,$FREE"
  [fr03]="res.6 $FREE03"
  [mlp_fr03]="mlp.6 $FREE03"
  [att_fr03]="att.6 $FREE03"
  [fr03_s1]="res.6 $FREE03 --seed 1"
  [mlp_fr03_s1]="mlp.6 $FREE03 --seed 1"
  [r25_bw05]="res.6 $BW05 --sweeps jumprelu=32/64"
  [r25_bw10]="res.6 $FREE03,jumprelu.bandwidth=0.1 --sweeps jumprelu=32/64"
  [r25_tlr5]="res.6 jumprelu.unit_decoder=false,jumprelu.init_norm=0.3,jumprelu.threshold_lr=5,jumprelu.bandwidth=0.05 --sweeps jumprelu=32/64"
  [r25_b09]="res.6 $FREE03 --adam-beta1 0.9 --sweeps jumprelu=32/64"
  [r25_nofreq]="res.6 $BW05,jumprelu.freq_coefficient=0 --sweeps jumprelu=32/64"
  [r25_att]="att.6 $BW05 --sweeps jumprelu=14/32"
  [r25_from1]="res.6 $FROM1 --sweeps jumprelu=32/64"
  [r25_att_from1]="att.6 $FROM1 --sweeps jumprelu=14/32"
  [r25_from05]="res.6 $FROM05 --sweeps jumprelu=32/64"
  [r25_att_from05]="att.6 $FROM05 --sweeps jumprelu=14/32"
  [r25_t1]="res.6 $FROM03_T1 --sweeps jumprelu=32/64"
  [r25_quad]="res.6 $BW05,jumprelu.l0_penalty=quadratic --sweeps jumprelu=32/64"
  [r25_const]="res.6 $BW05,jumprelu.init_l0=0,jumprelu.threshold_init=0.03 --sweeps jumprelu=32/64"
  [r25_att_t1]="att.6 $FROM03_T1 --sweeps jumprelu=14/32"
  [r25_att_1ep]="att.6 $BW05 --sweeps jumprelu=14/32 $ONE_EPOCH"
  [r25_att_def_1ep]="att.6 - $ONE_EPOCH"
  [r25_res_def_1ep]="res.6 - $ONE_EPOCH"
)
for NAME in ${@:-${!ROWS[@]}}; do
  read -r SITE KNOBS ARGS <<< "${ROWS[$NAME]}"
  [ "$KNOBS" = - ] || ARGS="--family-knobs $KNOBS $ARGS"
  # shellcheck disable=SC2086
  saescope compare --store "$STORE" --out "runs/v23/$NAME" --site "$SITE" --width 4096 --sweeps jumprelu=14/32/64/96 \
    --train-tokens 245760 --suite core --eval-sequences 16 --eval-context-len 256 $ARGS
done
