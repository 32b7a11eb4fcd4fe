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

from eval_utils import EVAL_PROTOCOLS, get_test_acc  # noqa: E402
from numerics import choose_numerics, pick_device  # noqa: E402
from recorder import format_scores  # noqa: E402
from run_data import load_data  # noqa: E402
from options import saved_args  # noqa: E402
from runs import network_from_checkpoint, read_checkpoint  # noqa: E402
from utils import ArgumentParser, UserError, run_cli  # noqa: E402


def main() -> None:
    parser = ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a run's last.pt or best.pt")
    parser.add_argument("--data_dir", default=None, help="override the run's --data_dir")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                        help="where to extract features")
    cli = parser.parse_args()
    state = read_checkpoint(Path(cli.checkpoint), "--checkpoint")
    args = saved_args(state["args"])
    if args.dataset != "market":
        raise UserError(f"--checkpoint {cli.checkpoint} was trained on {args.dataset}; the "
                        "released code's misreading concerns Market-1501 file names only")
    args.device, args.gpu = cli.device, None
    args.data_dir = cli.data_dir or args.data_dir
    device = pick_device(args)
    net = network_from_checkpoint(state).to(device)
    results = {}
    for protocol in EVAL_PROTOCOLS:
        args.eval_protocol = protocol
        data = load_data(args, device, choose_numerics(args, device))
        results[protocol] = get_test_acc(net, data.query, data.gallery, device)
        print(f"{protocol:9s} {format_scores(results[protocol])}")
    std, rel = results["standard"], results["released"]
    print(f"released - standard: rank-1 {100 * (rel['rank1'] - std['rank1']):+.2f} points, "
          f"mAP {100 * (rel['mAP'] - std['mAP']):+.2f} points")


if __name__ == "__main__":
    run_cli(main)
