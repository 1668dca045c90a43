# The head-to-head reads saescope's JumpReLU at L0 16 off the chord between its SAEs at targets 14
# and 32 (L0 13.9 and 32.5 on att.6), while TopK is measured at k = 16 itself; a frontier that bends
# between them puts the chord above it. This trains saescope's JumpReLU at target 16 beside 14 and 32,
# with our TopK and SAELens' TopK at 16, over seeds 0-2 (otherwise compare_sites.sh's settings), and
# evaluates them on the same 8,192 held-out tokens. About 17 minutes a seed on a 2-core CPU.
# Run from the repository with the virtual environment active:  bash experiments/att6_l16_direct.sh
set -e
STORE=${1:-runs/exp6/activations}
saescope compare --store "$STORE" --out runs/h2h_att6_t16 --site att.6 --width 4096 \
  --sweeps "jumprelu=14/16/32,topk=16" --family-knobs "topk.dead_tokens=50000" --train-tokens 245760 \
  --baseline saelens --baseline-sweeps "topk=16" \
  --eval-sequences 32 --eval-context-len 256 --seeds 3 --seed 0 --suite core --matched-l0 16
