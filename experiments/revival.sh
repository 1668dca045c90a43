# How JumpReLU's revival behaves at low targets (README, "Reviving without the jolt"): att.6 and
# res.6 of the JumpReLU experiments' store, width 4096, the head-to-head's 245,760 tokens, targets
# 14 and 32, three ways: revival after 10,000 silent tokens without the Adam floor (the default before
# it), a dead window of ~300 expected firing intervals (d_sae / target) without the floor, and the
# default (revival after 10,000 tokens, dead latents' Adam second moments floored).
# Run from the repository with the virtual environment active:  bash experiments/revival.sh
set -e
STORE=${1:-runs/exp6/activations}
[ -f "$STORE/store.json" ] || \
  saescope harvest --sites res,mlp,att --layers 6 --tokens 120000 --shard-rows 20000 --out "$STORE"
run() {  # site, name, sweeps, knobs
  saescope compare --store "$STORE" --out "runs/revival_${1/./}_$2" --site "$1" --width 4096 --sweeps "$3" \
    --family-knobs "$4" --train-tokens 245760 --eval-sequences 16 --eval-context-len 256 --suite core
}
for SITE in att.6 res.6; do
  run $SITE unfloored jumprelu=14/32 jumprelu.floor_moments=false
  run $SITE window14 jumprelu=14 jumprelu.floor_moments=false,jumprelu.dead_tokens=91429
  run $SITE window32 jumprelu=32 jumprelu.floor_moments=false,jumprelu.dead_tokens=40000
  run $SITE floored jumprelu=14/32 jumprelu.floor_moments=true
done
for f in runs/revival_*/compare.md; do echo "$f"; sed -n 5,6p "$f"; done
