"""What a run reports: console log copy, TensorBoard events, metrics.json and curves.png
(checkpoints are runs.py's)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from core_reid.utils import atomic_write, atomic_write_text

TEST_KEYS = ("rank1", "rank5", "rank10", "mAP")
# curves.png is redrawn at a test at most this often, and always at the run's last epoch: on a
# GPU tests are minutes apart and each one redraws it; a tiny CPU run, whose drawing would cost
# more than its epochs, draws it once at the end (TensorBoard has the live curves).
REDRAW_CURVES_S = 60.0


class RunRecorder:
    """Writes a run's outputs; ``history`` holds one dict per finished epoch."""

    def __init__(self, run_dir: Path, meta: dict[str, Any],
                 history: Optional[list[dict]] = None):
        from tensorboardX import SummaryWriter  # imported here: slow, and only runs need it
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self.history: list[dict] = list(history or [])
        self.log_file = open(run_dir / "train.log", "a", buffering=1)
        self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.curves_drawn = time.monotonic()  # (the run's start)

    def log(self, message: str) -> None:
        """Print a line and keep a copy in ``train.log``."""
        print(message, flush=True)
        self.log_file.write(message + "\n")

    def add_epoch(self, record: dict[str, Any]) -> None:
        """Record one epoch: TensorBoard scalars, metrics.json (atomically), the curves and its
        console line."""
        epoch = record["epoch"]
        self.tb.add_scalar("lr", record["lr"], epoch)
        for k, stats in enumerate(record["networks"], start=1):
            for key, value in stats.items():
                if value is not None:  # e.g. no noisy samples to correct at ratio 0
                    self.tb.add_scalar(f"net{k}/{key}", value, epoch)
        if record.get("labels_changed") is not None:  # no injected noise: the method's
            self.tb.add_scalar("labels/changed", record["labels_changed"], epoch)
        for key in TEST_KEYS:
            if record.get(key) is not None:
                self.tb.add_scalar(f"test/{key}", record[key], epoch)
        self.tb.flush()
        self.history.append(record)
        self.write_metrics()
        last = epoch == self.meta["epochs"] - 1
        if record.get("rank1") is not None and (
                last or time.monotonic() - self.curves_drawn >= REDRAW_CURVES_S):
            self.plot_curves()
            self.curves_drawn = time.monotonic()
        nets = "  ".join(f"net{k + 1} loss {n['loss']:.3f} acc {n['train_acc']:.3f}"
                         + (f" lambda {n['lambda']:.2f}" if "lambda" in n else "")
                         + (f" label-prec {fraction(n['label_precision'])}"
                            if "label_precision" in n
                            else f" disagree {fraction(n['disagree_with_annotation'])}")
                         for k, n in enumerate(record["networks"]))
        if "labels_changed" in record:
            nets += f"  changed {fraction(record['labels_changed'])}"
        self.log(f"epoch {epoch}/{self.meta['epochs'] - 1} [{record['stage']}] lr "
                 f"{record['lr']:.4g}  {nets}  {record['epoch_time_s']:.1f}s "
                 f"{record['images_per_s']:.0f} img/s")
        if record.get("rank1") is not None:
            self.log(f"  test epoch {epoch}: {format_scores(record)}")

    def add_image(self, tag: str, picture: Any, step: int) -> None:
        """An RGB picture (height x width x 3, uint8) in TensorBoard's images."""
        self.tb.add_image(tag, picture, step, dataformats="HWC")
        self.tb.flush()

    def summary(self) -> tuple[Optional[dict], Optional[dict]]:
        """(best-by-rank-1, final) test results, each with its epoch."""
        tested = [h for h in self.history if h.get("rank1") is not None]
        if not tested:
            return None, None
        pick = lambda h: {"epoch": h["epoch"], **{k: h[k] for k in TEST_KEYS}}  # noqa: E731
        best = max(tested, key=lambda h: (h["rank1"], -h["epoch"]))
        return pick(best), pick(tested[-1])

    def write_metrics(self) -> None:
        best, final = self.summary()
        payload = {**self.meta, "history": self.history, "best": best, "final": final}
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(payload, indent=1))

    def plot_curves(self) -> None:
        """curves.png: test scores, training loss and label precision over epochs."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [h["epoch"] for h in self.history]
        tested = [h for h in self.history if h.get("rank1") is not None]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        axes[0].plot([h["epoch"] for h in tested], [h["rank1"] for h in tested], "o-",
                     label="rank-1")
        axes[0].plot([h["epoch"] for h in tested], [h["mAP"] for h in tested], "s-", label="mAP")
        axes[0].set_title("test (network 1)")
        truth = "label_precision" in self.history[0]  # else: no injected noise, no truth
        label_key = "label_precision" if truth else "disagree_with_annotation"
        for k in range(len(self.history[0]["networks"])):
            nets = [h["networks"][k] for h in self.history]
            axes[1].plot(epochs, [n["loss"] for n in nets], label=f"network {k + 1}")
            axes[2].plot(*diagnosed(epochs, [n[label_key] for n in nets]),
                         label=f"network {k + 1}")
        injected = self.meta.get("injected_label_precision")
        if injected is not None:
            axes[2].axhline(injected, color="gray", ls="--", label="injected labels")
        if not truth:
            axes[2].plot(*diagnosed(epochs, [h["labels_changed"] for h in self.history]), "k--",
                         label="changed by the method")
        for h, before in zip(self.history[1:], self.history):  # a method's stages, in one curve
            if h["stage"] != before["stage"]:
                for ax in axes:
                    ax.axvline(h["epoch"] - 0.5, color="gray", ls=":", lw=1)
                axes[0].annotate(h["stage"], (h["epoch"], 0), xytext=(3, 3), fontsize=8,
                                 textcoords="offset points", xycoords=("data", "axes fraction"))
        axes[1].set_title("training loss")
        axes[2].set_title("label precision (refined label = true label)" if truth else
                          "predictions that disagree with the annotations (no truth known)")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        atomic_write(self.run_dir / "curves.png", lambda tmp: fig.savefig(tmp, format="png"))
        plt.close(fig)

    def report(self) -> tuple[Optional[dict], Optional[dict]]:
        """Log the run's end: best and final test scores, label precision, where the files are;
        returns (best, final)."""
        best, final = self.summary()
        self.log(f"done: best (epoch {best['epoch']}, chosen on the test set, optimistic) "
                 f"{format_scores(best)}")
        self.log(f"      final (epoch {final['epoch']}) {format_scores(final)}")
        last = self.history[-1]
        if self.meta["injected_label_precision"] is not None:
            self.log(f"      label precision: injected {self.meta['injected_label_precision']:.3f}"
                     " -> refined " + ", ".join(f"net{k + 1} {n['label_precision']:.3f}"
                                                for k, n in enumerate(last["networks"])))
        else:
            self.log("      labels (no injected noise, so no truth to score them against): "
                     + ", ".join(f"net{k + 1} disagrees with {n['disagree_with_annotation']:.3f}"
                                 for k, n in enumerate(last["networks"]))
                     + f" of the annotations; the method changed {last['labels_changed']:.3f}"
                     " (test.py --audit lists them)")
        self.log(f"      files: {self.run_dir} (metrics.json, curves.png, train.log, best.pt, "
                 f"last.pt, tensorboard/: tensorboard --logdir {self.run_dir / 'tensorboard'})")
        return best, final

    def close(self) -> None:
        self.tb.close()
        self.log_file.close()

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def fraction(value: Optional[float]) -> str:
    """A label diagnostic in a log line; '-' in an epoch without diagnostics."""
    return "-" if value is None else f"{value:.3f}"


def diagnosed(epochs: list[int], values: list[Optional[float]]
              ) -> tuple[list[int], list[float]]:
    """The epochs with label diagnostics (--diagnostics_every) and their values."""
    kept = [(e, v) for e, v in zip(epochs, values) if v is not None]
    return [e for e, _ in kept], [v for _, v in kept]


def format_scores(scores: dict[str, float]) -> str:
    return "  ".join(f"{k} {100 * scores[k]:.2f}" for k in TEST_KEYS)
