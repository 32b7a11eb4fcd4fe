"""The methods and their registry. A method is one class (methods/base.py's ``Method``) that
declares everything about itself; ``METHODS`` maps each ``--method`` name to its class, and the
scripts' flags, the grid's plan and its report are built from it. docs/adding_a_method.md walks
through adding one.

- baseline: one network, cross-entropy on the noisy labels.
- SELF: one network, ``-(1 - lam) log p[y] - lam log max p``; lam = 1 / (1 + last epoch's mean
  loss), 0 in the first epoch.
- CORE: two peers on the same batches; SELF (each its own lam) for epochs <= stage1_epochs,
  then co-refining: each learns from the other's refined label and distribution.
- PurifyNet: one network, two stages (a ramped-lambda SELF, then the stage-1 network's
  predictions as labels, Beta-weighted).
- Co-teaching: two networks; each keeps the small-loss part of the batch for its peer.
- JoCoR: two networks trained together on the small-loss part of one joint loss (their
  cross-entropies and a symmetric KL between them).
"""
from __future__ import annotations

from methods.base import Method, Peer, RunAccess, flags_of, step_decay
from methods.baseline import Baseline
from methods.core import CoRefining
from methods.coteaching import CoTeaching
from methods.jocor import JoCoR
from methods.purifynet import PurifyNet
from methods.self_refining import SelfRefining

__all__ = ["METHODS", "PAPER_METHODS", "Method", "Peer", "RunAccess", "method_flags", "register",
           "script_methods", "step_decay"]

SCRIPTS = ("train_self.py", "train_core.py")
METHODS: dict[str, type[Method]] = {}
PAPER_METHODS = ("baseline", "self", "core")  # the CORE paper's comparison


def register(method: type[Method]) -> type[Method]:
    """Add ``method`` to ``METHODS`` (usable as a class decorator): its name becomes a
    ``--method`` choice of its script, its flags that script's flags, and the grid can run it."""
    if not {"name", "title"} <= vars(method).keys() or method.script not in SCRIPTS:
        raise ValueError(f"{method.__name__}: a method declares its own name and title, and "
                         f"a script in {SCRIPTS}")
    if METHODS.get(method.name, method) is not method:
        raise ValueError(f"{method.__name__}: the name {method.name!r} is taken")
    METHODS[method.name] = method
    return method


for _method in (Baseline, SelfRefining, CoRefining, PurifyNet, CoTeaching, JoCoR):
    register(_method)


def script_methods(script: str) -> list[type[Method]]:
    """The methods ``script`` trains, its default first, then in registry order (a method is
    the default only by its own declaration, never by inheritance)."""
    found = [m for m in METHODS.values() if m.script == script]
    return sorted(found, key=lambda m: not vars(m).get("script_default", False))



def method_flags() -> dict[str, tuple[str, list[str]]]:
    """Every method's own flag, as ``--name``: (the method that introduces it, the methods that
    read it), from what each registered method's ``add_args`` adds."""
    flags: dict[str, tuple[str, list[str]]] = {}
    for method in METHODS.values():
        for k in method.flag_classes():
            for flag in flags_of(k):
                flags.setdefault(flag, (k.name, []))[1].append(method.name)
    return flags
