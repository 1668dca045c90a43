# The one point where saescope's JumpReLU is furthest behind in the head-to-head, att.6 at L0 16, looked
# at again; otherwise compare_sites.sh's settings, evaluated on the same 8,192 held-out tokens.
#   seeds   two more seeds (1 and 2; seed 0 is runs/h2h_att6) of only the SAEs that bracket L0 16:
#           saescope's JumpReLU targets 14 and 32 and TopK 16, SAELens' JumpReLU 0.003 and 0.001 and
#           TopK 16. About 16 minutes a seed on a 2-core CPU.
#   direct  the head-to-head reads our JumpReLU at L0 16 off the chord between its SAEs at 13.9 and
#           32.4 while TopK is measured at k = 16 itself; this trains it at target 16 beside 14 and 32,
#           with our TopK and SAELens' TopK at 16, seeds 0-2. About 17 minutes a seed.
#   confirm the same point on text no earlier run was measured on: our JumpReLU and TopK at 16, SAELens'
#           JumpReLU 0.003 and 0.001 and TopK 16, seeds 0-2, measured on the usual 32 held-out sequences
#           (runs/att6_c16) and then, the same SAEs copied, on the next 32 (--eval-offset 32,
#           runs/att6_c16_next). About 45 + 20 minutes on a 2-core CPU.
# Run from the repository with the virtual environment active:  bash experiments/att6_l16.sh seeds|direct|confirm
set -e
STORE=${2:-runs/exp6/activations}
case "$1" in
  seeds) ARGS=(--out runs/h2h_att6_l16 --sweeps "jumprelu=14/32,topk=16" --seeds 2 --seed 1
               --baseline-sweeps "jumprelu=0.003/0.001,topk=16") ;;
  direct) ARGS=(--out runs/h2h_att6_t16 --sweeps "jumprelu=14/16/32,topk=16" --seeds 3 --seed 0
                --baseline-sweeps "topk=16") ;;
  confirm) ARGS=(--out runs/att6_c16 --sweeps "jumprelu=16,topk=16" --seeds 3 --seed 0
                 --baseline-sweeps "jumprelu=0.003/0.001,topk=16") ;;
  *) echo "usage: bash experiments/att6_l16.sh seeds|direct|confirm [STORE]" >&2; exit 2 ;;
esac
COMMON=(--store "$STORE" --site att.6 --width 4096 --family-knobs "topk.dead_tokens=50000" --train-tokens 245760
        --baseline saelens --eval-sequences 32 --eval-context-len 256 --suite core --matched-l0 16)
saescope compare "${COMMON[@]}" "${ARGS[@]}"
if [ "$1" = confirm ]; then  # the trained SAEs (and their final checkpoints) copied, measured again
  rm -rf runs/att6_c16_next && cp -r runs/att6_c16 runs/att6_c16_next
  rm -f runs/att6_c16_next/compare.* runs/att6_c16_next/seed*/compare.*
  saescope compare "${COMMON[@]}" "${ARGS[@]/runs\/att6_c16/runs/att6_c16_next}" --eval-offset 32
fi
