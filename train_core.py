"""Train two peer networks on noisy labels with CORE (online co-refining), or with another
two-network method of the registry (--method; --help lists each with its flags).

    python train_core.py --dataset market --batchsize 32 --noise_ratio 0.2 --lr 0.01 --data_dir ../
    python train_core.py --demo          # synthetic data, 20% noise, small network, CPU-friendly
    python train_core.py --method coteaching --demo    # Co-teaching (Han et al. 2018)

Both peers see the same batches. For epochs <= --stage1_epochs each trains with SELF (its own
lambda); afterwards each learns from the other's refined label and distribution:
L1 = CE(logits1, argmax p2) + kl_weight * mean(-sum_c p2[c] log p1[c]), peer detached, and
symmetrically for network 2 (losses.py). The other methods: docs/methods.md.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from core_reid import options
from core_reid.engine import train
from core_reid.options import parse_args
from core_reid.utils import run_cli


def build_parser() -> argparse.ArgumentParser:
    return options.build_parser("train_core.py", __doc__)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(build_parser(), argv)
    return train(args, args.method)


if __name__ == "__main__":
    run_cli(main)
