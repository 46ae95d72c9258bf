"""``python -m bench gather``: seconds to list and label a dataset of many files (nothing is decoded).

Without folders it builds an ImageNet-validation-like dataset of empty files in a temporary folder
(``--param files=50000``, ``--param classes=1000``): a class-folder tree named by WordNet ids, the
same files in a flat folder with the devkit's ground truth and a ``LOC_val_solution.csv``, and
times :func:`faithmap.data.gather` on each layout: listing only, labels resolved to the ImageNet
classes, and a seeded sample of 5,000. With folders it times listing them (and resolving their
labels to the ImageNet classes when they are a labelled tree). Listing reads directories only, so
the cost grows with the number of files; the rows report microseconds per file.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time

from faithmap.core.io import write_text
from faithmap.data import devkit_to_wnid, gather, imagenet_wnids
from faithmap.models import imagenet_classes

from .common import Options, bench, dump, machine, table

COLUMNS = [("case", "case", ""), ("files", "files", ".0f"), ("records", "records", ".0f"),
           ("seconds", "seconds (best)", ".2f"), ("us_per_file", "µs per file", ".1f")]


def _build(root: str, files: int, classes: int) -> dict[str, str]:
    wnids = imagenet_wnids()[:classes]
    number = {w: k for k, w in devkit_to_wnid().items()}
    tree, flat = os.path.join(root, "tree"), os.path.join(root, "flat")
    os.makedirs(flat)
    for w in wnids:
        os.makedirs(os.path.join(tree, w))
    gt, loc = [], ["ImageId,PredictionString\n"]
    for i in range(1, files + 1):
        w = wnids[(i * 7919) % len(wnids)]
        name = f"ILSVRC2012_val_{i:08d}"
        for folder in (os.path.join(tree, w), flat):
            pathlib.Path(folder, name + ".JPEG").touch()  # an empty input file: listing never opens it
        gt.append(f"{number[w]}\n")
        loc.append(f"{name},{w} 1 2 3 4\n")
    paths = {"tree": tree, "flat": flat, "gt": os.path.join(root, "ILSVRC2012_validation_ground_truth.txt"),
             "loc": os.path.join(root, "LOC_val_solution.csv")}
    write_text(paths["gt"], "".join(gt))
    write_text(paths["loc"], "".join(loc))
    return paths


@bench("gather")
def bench_gather(opts: Options) -> int:
    """Seconds to list, label and sample many files (synthetic ImageNet validation, or the folders given)."""
    files, classes = int(opts.params.get("files", 50_000)), int(opts.params.get("classes", 1000))
    names = imagenet_classes()
    repeats = opts.repeats
    load_start = os.getloadavg()
    rows = []

    def run(case: str, n: int, fn) -> None:
        best, got = float("inf"), 0
        for _ in range(repeats):
            start = time.perf_counter()
            got = len(fn())
            best = min(best, time.perf_counter() - start)
        rows.append({"case": case, "files": n, "records": got, "seconds": best, "us_per_file": 1e6 * best / n})
        print(f"{case}: {got} records in {best:.2f} s", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="faithmap-bench-gather-") as root:
        if opts.images:
            for p in opts.images:
                n = len(gather(p))
                run(f"list {p}", n, lambda p=p: gather(p))
        else:
            start = time.perf_counter()
            paths = _build(root, files, classes)
            print(f"built {files} empty files twice in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            run("tree: list", files, lambda: gather(paths["tree"]))
            run("tree: list + labels (WordNet-id folders)", files, lambda: gather(paths["tree"], class_names=names))
            run("tree: list + labels + sample 5000", files,
                lambda: gather(paths["tree"], class_names=names, sample=min(5000, files), seed=0))
            run("flat: list", files, lambda: gather(paths["flat"]))
            run("flat + devkit ground truth", files,
                lambda: gather(paths["flat"], labels=paths["gt"], class_names=names))
            run("flat + LOC_val_solution.csv", files,
                lambda: gather(paths["flat"], labels=paths["loc"], class_names=names))
    print(f"machine: {machine()}; load average {load_start[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    print(table(rows, COLUMNS))
    dump(opts.json, {"machine": machine(), "load_average": [load_start[0], os.getloadavg()[0]], "rows": rows})
    return 0
