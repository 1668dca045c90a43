# Issue 16's family comparison: JumpReLU, TopK, BatchTopK, Matryoshka and ATM on res.6 of Gemma 3 270M,
# width 4096, every SAE on the same 245,760 tokens in the same order (compare's defaults otherwise:
# the default run's schedule and normalisation), then the evaluation suite on all of them: delta LM
# loss, sparse probing and first-letter absorption side by side, per SAE and at matched L0 16/32/64
# (OUT/compare.md), plot copied to docs/families_res6.png. ATM's knob is its L1 coefficient, so its
# four values bracket L0 16-64 rather than hitting them.
# Run from the repository with the virtual environment active:  bash experiments/absorption_res6.sh
set -e
STORE=${1:-runs/exp6/activations}
OUT=${2:-runs/families_res6}
# A finished store is kept as it is (a rerun only adds the loss-sensitivity file an older one lacks).
saescope harvest --sites res,mlp,att --layers 6 --tokens 120000 --shard-rows 20000 --out "$STORE"
saescope compare --store "$STORE" --out "$OUT" --site res.6 --width 4096 \
  --sweeps "jumprelu=16/32/64,topk=16/32/64,batchtopk=16/32/64,matryoshka=16/32/64,atm=0.05/0.1/0.2/0.4" \
  --train-tokens 245760 --eval-sequences 16 --eval-context-len 256 --suite core,position,probing,tpp,absorption
cp "$OUT/compare.png" docs/families_res6.png
