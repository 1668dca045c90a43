# The one point where saescope's JumpReLU is furthest behind in the head-to-head (att.6 at L0 16) over
# two more seeds: only the SAEs that bracket L0 16 (saescope's JumpReLU targets 14 and 32 and TopK 16,
# SAELens' JumpReLU 0.003 and 0.001 and TopK 16), otherwise compare_sites.sh's settings, seeds 1 and 2
# (seed 0 is runs/h2h_att6). About 16 minutes a seed on a 2-core CPU.
# Run from the repository with the virtual environment active:  bash experiments/att6_l16_seeds.sh
set -e
STORE=${1:-runs/exp6/activations}
saescope compare --store "$STORE" --out runs/h2h_att6_l16 --site att.6 --width 4096 \
  --sweeps "jumprelu=14/32,topk=16" --family-knobs "topk.dead_tokens=50000" --train-tokens 245760 \
  --baseline saelens --baseline-sweeps "jumprelu=0.003/0.001,topk=16" \
  --eval-sequences 32 --eval-context-len 256 --seeds 2 --seed 1 --suite core --matched-l0 16
