"""Score one trained network under the standard Market-1501 protocol and under the released
code's evaluation (cameras mis-read from file names, junk counted as a negative), to show how
far the released numbers are from the standard ones.

    python benchmarks/compare_protocols.py --checkpoint res/<run>/last.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core_reid.checkpoint_eval import descriptors, open_checkpoint  # noqa: E402
from eval_utils import EVAL_PROTOCOLS, score  # noqa: E402
from core_reid.recorder import format_scores  # noqa: E402
from core_reid.run_data import load_eval_sets  # noqa: E402
from core_reid.utils import ArgumentParser, UserError, run_cli  # noqa: E402


def main() -> None:
    parser = ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a run's last.pt or best.pt")
    parser.add_argument("--data_dir", default=None, help="override the run's --data_dir")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                        help="where to extract features")
    cli = parser.parse_args()
    run = open_checkpoint(cli.checkpoint, cli.device, None, {"data_dir": cli.data_dir})
    if run.args.dataset != "market":
        raise UserError(f"--checkpoint {cli.checkpoint} was trained on {run.args.dataset}; the "
                        "released code's misreading concerns Market-1501 file names only")
    results = {}
    for protocol in EVAL_PROTOCOLS:
        run.args.eval_protocol = protocol
        query, gallery = load_eval_sets(run.args, run.device, run.numerics)
        qf, gf = descriptors(run, [0], query, gallery)["net1"]
        results[protocol] = score(qf, gf, query, gallery)
        print(f"{protocol:9s} {format_scores(results[protocol])}")
    std, rel = results["standard"], results["released"]
    print(f"released - standard: rank-1 {100 * (rel['rank1'] - std['rank1']):+.2f} points, "
          f"mAP {100 * (rel['mAP'] - std['mAP']):+.2f} points")


if __name__ == "__main__":
    run_cli(main)
