"""Turn a Re-ID download, or your own images (--dataset custom), into the folder layout the
training scripts read.

    python prepare_market.py --src Market-1501-v15.09.15.zip --dst ../market
    python prepare_market.py --dataset duke --src DukeMTMC-reID.zip --dst ../duke
    python prepare_market.py --dataset cuhk03 --src cuhk03-np/ --dst ../cuhk03
    python prepare_market.py --dataset msmt17 --src MSMT17_V1/ --dst ../msmt17
    python prepare_market.py --dataset custom --src photos/manifest.csv --dst ../mydata/shop

SRC (the download's folder, the folder holding it, or its zip; for --dataset custom a manifest
.csv or a folder laid out as <split>/<pid>/<camid>_<name>.jpg) is only read, never changed. DST
becomes DST/{train_all,train,val,query,gallery[,multi-query]}/<pid>/<file>; the work itself is
datasets.prepare (an own dataset: datasets.custom, and DST's name is the dataset's name for
training). Safe to rerun: it completes an interrupted run and only verifies a complete one.
"""
from __future__ import annotations

from pathlib import Path

from datasets import DATASETS
from datasets.custom import CUSTOM, prepare_custom
from datasets.prepare import format_summary, prepare
from core_reid.utils import ArgumentParser, run_cli


def build_parser() -> ArgumentParser:
    tops = ", ".join(f"{name}: {' or '.join(layout.top_folder + '/' for layout in info.layouts)}"
                     for name, info in DATASETS.items())
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="market", choices=[*DATASETS, CUSTOM],
                        help="which download SRC holds (cuhk03 = CUHK03-NP detected boxes, the "
                             "paper's; cuhk03_labeled = its labeled boxes; custom = your own "
                             "data: see docs/own_data.md)")
    parser.add_argument("--src", type=Path, required=True,
                        help=f"the download's folder ({tops}), the folder holding it, or its "
                             ".zip; with --dataset custom a manifest .csv (path,pid,camid,split) "
                             "or a folder <split>/<pid>/<camid>_<name>.jpg; only read, never "
                             "changed")
    parser.add_argument("--dst", type=Path, required=True,
                        help="output folder, e.g. ../market (then train with --data_dir .. "
                             "--dataset market); for --dataset custom its name is the "
                             "dataset's name (../mydata/shop: --data_dir ../mydata --dataset "
                             "shop)")
    parser.add_argument("--link", action="store_true",
                        help="hard-link instead of copying (needs the extracted folder, on the "
                             "same filesystem as DST)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.dataset == CUSTOM:
        summary = prepare_custom(args.src, args.dst, link=args.link)
    else:
        summary = prepare(args.src, args.dst, link=args.link, dataset=args.dataset)
    print(format_summary(summary))


if __name__ == "__main__":
    run_cli(main)
