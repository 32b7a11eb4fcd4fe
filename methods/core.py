"""CORE (online co-refining): two peers on the same batches; SELF for epochs <= --stage1_epochs
(the released code: 20), then each learns from the other's refined label and distribution."""
from __future__ import annotations

import argparse
from pathlib import Path

import losses
from core_reid.utils import UserError, check_number
from methods.self_refining import SelfRefining


class CoRefining(SelfRefining):
    """CORE: two peers, SELF (each its own lambda) for epochs <= stage1_epochs, then online
    co-refining."""
    name = "core"
    title = "CORE"
    script = "train_core.py"
    script_default = True
    summary = "online co-refining"
    networks = 2
    demo_defaults = {"stage1_epochs": 17}

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.stage1_epochs, self.kl_weight = args.stage1_epochs, args.kl_weight
        self.selective = args.selective
        if getattr(args, "init_from", None):
            self.init_checkpoints = ("--init_from", list(args.init_from))

    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        a = parser.add_argument
        a("--stage1_epochs", type=int, default=20,
          help="epochs 0..N train each peer with SELF, co-refining follows (the released code: "
          "20, one epoch after the first learning-rate decay)")
        a("--kl_weight", type=float, default=1.0,
          help="weight of the soft term towards the peer's distribution")
        a("--selective", action="store_true",
          help="selective consistency: the peer's hard label only counts on samples where both "
          "peers agree (per sample; see docs/differences.md)")
        a("--init_from", nargs=2, default=None, metavar=("CKPT1", "CKPT2"),
          help="start network 1 and 2 from the networks of two SELF or baseline runs (their "
          "last.pt or best.pt), as the released code's --resume does; optimisers, lambda and "
          "the epoch count start afresh. Used when a run starts; --resume continues from its "
          "own checkpoint")

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        check_number("--kl_weight", args.kl_weight, args.kl_weight >= 0, ">= 0 (released: 1)")
        check_number("--stage1_epochs", args.stage1_epochs,
                     0 <= args.stage1_epochs <= args.epochs - 2,
                     f"in 0..{args.epochs - 2} with --epochs {args.epochs}, so that "
                     "co-refining starts within the run (released: 20 of 61)")
        for path in args.init_from or []:
            if not Path(path).is_file():
                raise UserError(f"--init_from {path}: no such file; give the last.pt or "
                                "best.pt of two train_self.py runs")

    def stage(self, epoch: int) -> str:
        return "SELF" if epoch <= self.stage1_epochs else "co-refining"

    def batch_losses(self, epoch, logits, labels, index):
        if self.stage(epoch) == "SELF":
            return super().batch_losses(epoch, logits, labels, index)
        first, second = logits
        return [losses.co_refining_loss(first, second, self.kl_weight, self.selective),
                losses.co_refining_loss(second, first, self.kl_weight, self.selective)]

    def schedule_warnings(self, args: argparse.Namespace) -> list[str]:
        """Co-refining that starts at the large learning rate can collapse both peers."""
        milestones, first_co = args.milestones, self.stage1_epochs + 1
        if first_co >= args.epochs or not milestones or first_co >= milestones[0]:
            return []
        return [f"warning: co-refining starts at epoch {first_co}, before the first learning-"
                f"rate decay (epoch {milestones[0]}): at the large learning rate both peers "
                "can collapse onto a few classes (label precision near 0 on our test data). "
                "The released schedule starts it after the decay (--stage1_epochs 20, "
                "--milestones 20 50); set --stage1_epochs >= first milestone - 1"]
