# The issue-4 reproduction: five families on res.6 of Gemma 3 270M, width 4096, every SAE on the same
# 245,760 tokens in the same order, sites standardised per dimension (see the README), then held-out
# evaluation, table (OUT/compare.md) and plot (OUT/compare.png -> docs/compare_res6.png).
# JumpReLU here is the recipe's objective (lambda * L0, no data init, no frequency penalty) as it was
# when the README's family table was measured; saescope's defaults are in experiments/jumprelu.py.
# Run from the repository with the virtual environment active (`. .venv/bin/activate`).
# Sized for a 2-core CPU: 120,000 harvested tokens (the last 20,000 held out), 240 steps of 1024.
set -e
OUT=${1:-runs/compare_res6}
saescope harvest --sites res --layers 6 --tokens 120000 --shard-rows 20000 --out "$OUT/activations"
saescope compare --store "$OUT/activations" --out "$OUT" --site res.6 --width 4096 --normalize standardize \
  --sweeps "jumprelu=0.003/0.01/0.03,topk=16/32/64,batchtopk=16/32/64,gated=0.01/0.03/0.1,relu=0.01/0.03/0.1" \
  --family-knobs "jumprelu.l0_penalty=l0,jumprelu.init_l0=0,jumprelu.freq_coefficient=0,jumprelu.bandwidth=0.01,topk.dead_tokens=50000,batchtopk.dead_tokens=50000" \
  --train-tokens 245760 --batch-size 1024 --lr 1e-3 --lr-warmup-steps 10 --l0-warmup-steps 40 --lr-decay 0 \
  --eval-sequences 16 --eval-context-len 256
cp "$OUT/compare.png" docs/compare_res6.png
