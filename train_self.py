"""Train one network with SELF (progressive self label refining) or the plain baseline on
noisy labels.

    python train_self.py --dataset market --noise_ratio 0.2 --data_dir ../            # SELF
    python train_self.py --method baseline --noise_ratio 0.2 --data_dir ../           # baseline
    python train_self.py --method baseline --noise_ratio 0 --data_dir ../             # clean
                                                            # model for --pattern noise
    python train_self.py --demo                            # synthetic data, minutes on a CPU

SELF's loss per sample is -(1 - lambda) log p[y] - lambda log max_c p[c], with lambda for an
epoch = 1 / (1 + mean training loss of the previous epoch) and 0 in the first (losses.py).
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
    parser.add_argument("--method", default="self", choices=["self", "baseline"],
                        help="'self': self label refining; 'baseline': plain cross-entropy "
                        "on the noisy labels")
    add_common_args(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(build_parser(), argv)
    return train(args, args.method)


if __name__ == "__main__":
    run_cli(main)
