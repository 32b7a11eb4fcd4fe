"""Where a run computes and with which arithmetic.

``--numerics released`` is the released code's arithmetic: fp32 with TF32 off, the default
(NCHW) memory format, plain SGD, PIL + DataLoader. ``--numerics fast`` (the default) adds, on
CUDA, bf16 autocast, TF32, channels_last and fused SGD, and uses the image cache; each only
where the installed torch and the device support it (requirements admit torch 2.1), and each
also switchable on its own (``--amp``, ``--channels_last``, ``--data_path``, ``--compile``).
What was chosen is printed and recorded in ``metrics.json`` (``numerics``), with each fast
setting that failed its check before training and was turned off (``fallbacks``, see
core_reid/fast_path.py).
"""
from __future__ import annotations

import argparse
import inspect
import platform
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

import torch
import torchvision

from core_reid.utils import UserError, first_line


def pick_device(args: argparse.Namespace) -> torch.device:
    """``--device``/``--gpu`` as a torch device; CUDA when asked for and present."""
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        if args.device == "auto":
            print("note: no CUDA device found; running on the CPU (slow for ResNet-50)")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device cuda: PyTorch {torch.__version__} sees no CUDA device (built "
                        f"for CUDA {torch.version.cuda or 'none: a CPU-only build'}); install "
                        "the build that matches the NVIDIA driver (README, On a GPU), or use "
                        "--device cpu")
    return torch.device(f"cuda:{args.gpu}" if args.gpu is not None else "cuda")


def fused_sgd_available() -> bool:
    """torch.optim.SGD takes ``fused=`` (torch >= 2.3)."""
    return "fused" in inspect.signature(torch.optim.SGD).parameters


def bf16_available(device: torch.device) -> bool:
    """bf16 autocast works here: any CPU, or a CUDA device that supports bf16 (Ampere on)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


@dataclass(frozen=True)
class Fallback:
    """A fast setting that failed its check and was turned off for the run."""
    setting: str   # e.g. "bf16 autocast"
    instead: str   # what the run uses instead (the released setting)
    reason: str    # what the check saw

    @classmethod
    def of_error(cls, setting: str, instead: str, err: Exception) -> Fallback:
        return cls(setting, instead, f"{type(err).__name__}: {first_line(err)}")

    def line(self) -> str:
        return f"fallback: {self.setting} failed ({self.reason}); using {self.instead}"


@dataclass(frozen=True)
class Numerics:
    """The arithmetic of one run, as recorded in metrics.json."""
    mode: str            # --numerics: "fast" or "released"
    dtype: str           # "float32", or "bfloat16" under autocast
    tf32: bool           # TF32 matmuls and convolutions (CUDA)
    channels_last: bool
    fused_sgd: bool
    compile: bool
    data_path: str       # "cache" or "loader" ("auto" until the data is loaded)
    matmul_convs: bool = False  # single-position convolutions as matrix products
    fallbacks: tuple[Fallback, ...] = ()  # fast settings turned off by their check

    @property
    def amp(self) -> bool:
        return self.dtype == "bfloat16"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        fell_back = ", ".join(f.setting for f in self.fallbacks)
        return (f"numerics {self.mode}: {self.dtype}{' autocast' if self.amp else ''}, TF32 "
                f"{'on' if self.tf32 else 'off'}, "
                f"{'channels_last' if self.channels_last else 'default memory format'}, "
                f"{'fused' if self.fused_sgd else 'plain'} SGD, "
                f"{'torch.compile' if self.compile else 'no compile'}, data path "
                f"{self.data_path}"
                + (", single-position convolutions as matmuls" if self.matmul_convs else "")
                + (f"; fell back from: {fell_back}" if fell_back else ""))


def choose_numerics(args: argparse.Namespace, device: torch.device) -> Numerics:
    """Resolve --numerics with --amp, --channels_last, --data_path, --compile and --matmul_convs;
    UserError for
    a contradiction or for a fast option this torch or device lacks."""
    released = args.numerics == "released"
    cuda = device.type == "cuda"
    if released:
        fast_flags = {"--amp on": args.amp == "on", "--channels_last on":
                      args.channels_last == "on", "--data_path cache": args.data_path == "cache",
                      "--compile": args.compile, "--matmul_convs": args.matmul_convs}
        for flag, given in fast_flags.items():
            if given:
                raise UserError(f"{flag} contradicts --numerics released (eager fp32, default "
                                "memory format, plain SGD, PIL/DataLoader); drop one of the two")
    if args.amp == "on" and not bf16_available(device):
        raise UserError(f"--amp on: {torch.cuda.get_device_name(device) if cuda else device} "
                        "has no bf16 support; use --amp off")
    if args.compile and not hasattr(torch, "compile"):
        raise UserError(f"--compile: torch {torch.__version__} has no torch.compile; "
                        "install torch >= 2.0 or drop --compile")
    fast_here = not released and cuda
    amp = args.amp == "on" or (args.amp == "auto" and fast_here and bf16_available(device))
    return Numerics(
        mode=args.numerics,
        dtype="bfloat16" if amp else "float32",
        tf32=fast_here,
        channels_last=args.channels_last == "on" or (args.channels_last == "auto" and fast_here),
        fused_sgd=fast_here and fused_sgd_available(),
        compile=bool(args.compile),
        data_path="loader" if released else args.data_path,
        matmul_convs=bool(args.matmul_convs))


def scoring_numerics(chosen: Numerics, recorded: Optional[dict[str, Any]],
                     device: torch.device) -> tuple[Numerics, str]:
    """The arithmetic to re-score a checkpoint with: the run's recorded dtype, TF32, memory
    format and convolutions (its metrics.json ``numerics`` block), so a re-score reproduces
    what the run logged; ``chosen`` (from the run's flags on this device) when nothing was
    recorded. Also says, in words, where the choice came from."""
    if not recorded:
        return chosen, "the run's flags on this device (its metrics.json has no numerics block)"
    dtype = recorded.get("dtype", chosen.dtype)
    note = "as the run recorded"
    if dtype == "bfloat16" and not bf16_available(device):
        dtype, note = "float32", "as the run recorded, but float32: this device has no bf16"
    return replace(chosen, dtype=dtype, tf32=bool(recorded.get("tf32", chosen.tf32)),
                   channels_last=bool(recorded.get("channels_last", chosen.channels_last)),
                   matmul_convs=bool(recorded.get("matmul_convs", chosen.matmul_convs))), note


def apply_tf32(numerics: Numerics, device: torch.device) -> None:
    """Switch TF32 for matmuls and cuDNN convolutions on or off (process-wide, CUDA only;
    cuDNN's own default is on, which the released numerics must turn off)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = numerics.tf32
        torch.backends.cudnn.allow_tf32 = numerics.tf32


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def set_threads(threads: Optional[int]) -> int:
    """``--threads``: torch's CPU threads for the rest of the process, set before any work
    (None: torch's own default, or what OMP_NUM_THREADS says). CPU results depend on it:
    reductions split their sums by thread, so another count rounds differently and training
    diverges from there. Returns the count in use."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def numerics_record(numerics: Numerics, device: torch.device, workers: int) -> dict[str, Any]:
    """metrics.json's ``numerics`` block: the choices plus the software and hardware, and the
    CPU threads torch computes with."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {**asdict(numerics), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "cudnn": cudnn, "device": str(device), "device_name": device_name(device),
            "workers": workers, "threads": torch.get_num_threads()}


def describe_environment(record: dict[str, Any]) -> str:
    """One log line with the software and hardware of ``numerics_record``."""
    return (f"torch {record['torch']}, torchvision {record['torchvision']}, CUDA "
            f"{record['cuda']}, cuDNN {record['cudnn']}; {record['device']} "
            f"({record['device_name']}), {record['threads']} CPU threads, "
            f"{record['workers']} workers")
