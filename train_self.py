"""Train one network with SELF (progressive self label refining) or the plain baseline on
noisy labels.

    python train_self.py --dataset market --noise_ratio 0.2 --data_dir ../            # SELF
    python train_self.py --method baseline --noise_ratio 0.2 --data_dir ../           # baseline
    python train_self.py --method baseline --noise_ratio 0 --data_dir ../             # clean
                                                            # model for --pattern noise
    python train_self.py --demo                            # synthetic data, minutes on a CPU
    python train_self.py --method purifynet --demo         # PurifyNet, both stages in one run

SELF's loss per sample is -(1 - lambda) log p[y] - lambda log max_c p[c], with lambda for an
epoch = 1 / (1 + mean training loss of the previous epoch) and 0 in the first (losses.py).
PurifyNet: docs/methods.md.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from core_reid import options
from core_reid.engine import train
from core_reid.options import parse_args
from core_reid.utils import run_cli


def build_parser() -> argparse.ArgumentParser:
    return options.build_parser("train_self.py", __doc__)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(build_parser(), argv)
    return train(args, args.method)


if __name__ == "__main__":
    run_cli(main)
