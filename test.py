"""Test a saved network: rank-1/5/10 and mAP of a checkpoint on its run's query and gallery.

    python test.py --checkpoint res/<run>/best.pt                    # network 1, as logged
    python test.py --checkpoint res/<run>/best.pt --network both     # CORE: 1, 2 and both
    python test.py --checkpoint res/<run>/best.pt --rerank           # k-reciprocal re-ranking
    python test.py --checkpoint res/<run>/best.pt --pictures pics/   # ranked list, labels
    python test.py --checkpoint res/<run>/best.pt --audit            # the labels it doubts

Dataset, data folder, image size, protocol and numerics default to the checkpoint's run, so
the numbers equal those the run logged for that epoch. The scores (fractions in [0, 1]) are
written to --out (default: beside the checkpoint, named by what was scored). --audit scores
nothing: it writes RUN/audit/ (docs/audit.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from core_reid.audit import audit_checkpoint
from core_reid.checkpoint_eval import NETWORKS, test_checkpoint
from eval_utils import EVAL_PROTOCOLS
from core_reid.options import MIN_IMAGE_SIDE
from core_reid.pictures import PICKS
from core_reid.utils import ArgumentParser, UserError, check_number, check_writable_folder, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    a = parser.add_argument
    a("--checkpoint", required=True, help="a run's best.pt or last.pt")
    a("--network", default="1", choices=NETWORKS, help="which network to score: 1, 2 (CORE) "
      "or both (CORE: each, and their descriptors concatenated)")
    a("--dataset", default=None, help="dataset to test on (default: the run's)")
    a("--data_dir", default=None, help="folder holding the prepared dataset (default: the "
      "run's --data_dir)")
    a("--img_size", type=int, nargs=2, default=None, metavar=("H", "W"),
      help="test image size (default: the run's)")
    a("--eval_protocol", default=None, choices=EVAL_PROTOCOLS,
      help="'standard' Market-1501 protocol or the released code's (default: the run's)")
    a("--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, "
      "lambda=0.3) of the distances")
    a("--out", default=None, help="JSON file for the scores (default: beside the checkpoint, "
      "e.g. test_best_net1.json)")
    a("--pictures", default=None, metavar="DIR", help="also write ranked_<network>.png (a "
      "ranked list) and labels_net<k>.png (the labels each network corrected) into DIR")
    a("--queries", type=int, default=8, help="queries in the ranked-list picture")
    a("--top", type=int, default=10, help="gallery images per query in the ranked-list picture")
    a("--pick", default="random", choices=PICKS, help="which queries the ranked-list picture "
      "shows: drawn at random (with --seed) or the worst by average precision")
    a("--label_examples", type=int, default=6, help="samples shown per section of the "
      "label-correction pictures (corrected, still wrong, broken)")
    a("--seed", type=int, default=0, help="seed of the pictures' random choices")
    a("--audit", action="store_true", help="instead of scoring, audit the training labels with "
      "every network of the checkpoint: write RUN/audit/ (label_audit.csv: every training "
      "image, most suspicious first; refined_labels.csv, for --labels; probabilities.npz; "
      "suspects.png, also in TensorBoard); see docs/audit.md")
    a("--suspects", type=int, default=24, help="--audit: suspects shown in suspects.png")
    a("--device", default="auto", choices=["auto", "cuda", "cpu"], help="where to extract")
    a("--gpu", type=int, default=None, help="CUDA device index (default: the current one)")
    a("--workers", type=int, default=None, help="processes decoding images (default: the "
      "run's)")
    return parser


def check_cli(cli: argparse.Namespace) -> None:
    """One UserError line for a value out of range or a place that cannot be written."""
    check_number("--queries", cli.queries, cli.queries >= 1, ">= 1")
    check_number("--top", cli.top, cli.top >= 1, ">= 1")
    check_number("--label_examples", cli.label_examples, cli.label_examples >= 1, ">= 1")
    check_number("--seed", cli.seed, cli.seed >= 0, "an integer >= 0")
    check_number("--suspects", cli.suspects, cli.suspects >= 1, ">= 1")
    if cli.audit:
        for flag in ("dataset", "out", "pictures", "rerank"):
            if getattr(cli, flag):
                raise UserError(f"--{flag} with --audit: the audit scores nothing and reads the "
                                "run's own training split; drop one of them")
    if cli.workers is not None:
        check_number("--workers", cli.workers, cli.workers >= 0, ">= 0")
    if cli.img_size is not None and min(cli.img_size) < MIN_IMAGE_SIDE:
        raise UserError(f"--img_size {cli.img_size[0]} {cli.img_size[1]}: height and width must "
                        f"each be >= {MIN_IMAGE_SIDE}")
    if cli.gpu is not None and (cli.gpu < 0 or cli.device == "cpu"):
        raise UserError(f"--gpu {cli.gpu}: " + ("must be a CUDA device index >= 0"
                                                if cli.gpu < 0 else "contradicts --device cpu"))
    if cli.out is not None:
        if Path(cli.out).is_dir():
            raise UserError(f"--out {cli.out}: is a folder; give a file name, e.g. "
                            f"{Path(cli.out) / 'scores.json'}")
        check_writable_folder("--out", Path(cli.out).parent, cli.out)
    if cli.pictures is not None:
        check_writable_folder("--pictures", cli.pictures)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cli = build_parser().parse_args(argv)
    check_cli(cli)
    return audit_checkpoint(cli) if cli.audit else test_checkpoint(cli)


if __name__ == "__main__":
    run_cli(main)
