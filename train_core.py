"""Train two peer networks with CORE (online co-refining) on noisy labels.

    python train_core.py --dataset market --batchsize 32 --noise_ratio 0.2 --lr 0.01 --data_dir ../
    python train_core.py --demo          # synthetic data, 20% noise, small network, CPU-friendly

Both peers see the same batches. For epochs <= --stage1_epochs each trains with SELF (its own
lambda); afterwards each learns from the other's refined label and distribution:
L1 = CE(logits1, argmax p2) + kl_weight * mean(-sum_c p2[c] log p1[c]), peer detached, and
symmetrically for network 2 (losses.py).
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from engine import train
from options import add_common_args, parse_args
from utils import ArgumentParser, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1_epochs", type=int, default=20,
                        help="epochs 0..N train each peer with SELF, co-refining follows (the "
                        "released code: 20, one epoch after the first learning-rate decay)")
    parser.add_argument("--kl_weight", type=float, default=1.0,
                        help="weight of the soft term towards the peer's distribution")
    parser.add_argument("--selective", action="store_true",
                        help="selective consistency: the peer's hard label only counts on "
                        "samples where both peers agree (per sample; see README)")
    parser.add_argument("--init_from", nargs=2, default=None, metavar=("CKPT1", "CKPT2"),
                        help="start network 1 and 2 from the networks of two SELF or baseline "
                        "runs (their last.pt or best.pt), as the released code's --resume "
                        "does; optimisers, lambda and the epoch count start afresh. Used when "
                        "a run starts; --resume continues from its own checkpoint")
    add_common_args(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return train(parse_args(build_parser(), argv), "core")


if __name__ == "__main__":
    run_cli(main)
