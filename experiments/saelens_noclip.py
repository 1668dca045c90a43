"""Round 23's SAELens row: SAELens' JumpReLU trained as in the head-to-head (experiments/compare_sites.sh,
res.6) but without its gradient-norm clipping at 1.0, to see whether the clip is what its JumpReLU
gains from. Run from the repository with the virtual environment active:

    python experiments/saelens_noclip.py --out runs/v23/sl_noclip --site res.6
"""

from __future__ import annotations

import argparse

import torch

from saescope.cli import main as saescope_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="runs/exp6/activations")
    parser.add_argument("--out", default="runs/v23/sl_noclip")
    parser.add_argument("--site", default="res.6")
    args = parser.parse_args()
    # SAELens' trainer calls torch.nn.utils.clip_grad_norm_ after each backward; saescope never does.
    torch.nn.utils.clip_grad_norm_ = lambda *a, **k: torch.zeros(())
    raise SystemExit(
        saescope_main(
            ["compare", "--store", args.store, "--out", args.out, "--site", args.site, "--width", "4096"]
            + ["--sweeps", "topk=16", "--train-tokens", "245760", "--suite", "core", "--baseline", "saelens"]
            + [
                "--baseline-sweeps",
                "jumprelu=0.0003/0.001/0.003/0.01",
                "--eval-sequences",
                "16",
                "--eval-context-len",
                "256",
            ]
        )
    )


if __name__ == "__main__":
    main()
