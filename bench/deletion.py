"""``python -m bench deletion``: the cost of one photo's deletion and insertion curves.

The evaluation scores every map with ``deletion_insertion``, which sends one photo's two curves
through the model in batches: exactly 2 x (number of steps) images. The peer is the same
computation with one image per forward pass, as the authors' evaluation loop runs it. The map is a
seeded random map at each resolution: the cost does not depend on its values.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from faithmap.metrics import default_step, deletion_insertion

from .common import Options, bench, dump, gather_images, load_model, machine, mean_row, resolutions, table

COLUMNS = [("image", "image", ""), ("resolution", "res", ""), ("steps", "steps", ".0f"),
           ("images", "model images", ".0f"), ("seconds", "seconds (batched)", ".2f"),
           ("cpu", "CPU seconds (batched)", ".2f"), ("seconds_one", "seconds (1 image per forward)", ".2f"),
           ("cpu_one", "CPU seconds (1 per forward)", ".2f"), ("speedup", "time ratio", ".1f")]


@bench("deletion")
def bench_deletion(opts: Options) -> int:
    """Seconds and model images of deletion + insertion per photo, batched and one image per forward."""
    peer = bool(opts.params.get("peer", True))  # --param peer=false skips the one-image-per-forward runs
    load_start = os.getloadavg()
    model = load_model(opts)
    images = gather_images(opts)
    res_list = resolutions(opts)
    rows = []
    for res in res_list:
        for stem, arr in images:
            x = model.preprocess(arr)
            with torch.no_grad():
                t = model(x).argmax(1)
            sal = torch.rand(1, res, res, generator=torch.Generator().manual_seed(0)).to(x.device)
            timings = {}
            for label, cpu_label, bs in (("seconds", "cpu", opts.batch_size), ("seconds_one", "cpu_one", 1)):
                if bs == 1 and not peer:
                    continue
                best, best_cpu = float("inf"), float("inf")
                for _ in range(opts.repeats):
                    snap = model.counter.snapshot()
                    start, cpu0 = time.perf_counter(), time.process_time()
                    c = deletion_insertion(model, x, sal, t, batch_size=bs)
                    best = min(best, time.perf_counter() - start)
                    best_cpu = min(best_cpu, time.process_time() - cpu0)
                    n = model.counter.since(snap)["images"]
                timings[label], timings[cpu_label] = best, best_cpu
            cells = res * res
            steps = len(range(0, cells, default_step(cells)))
            assert n == c.images == 2 * steps
            row = {"image": stem, "resolution": res, "steps": steps, "images": n, **timings}
            if peer:
                row["speedup"] = timings["seconds_one"] / timings["seconds"]
            rows.append(row)
            print(f"{stem} @{res}: {n} model images, {timings['seconds']:.2f} s batched"
                  + (f", {timings['seconds_one']:.2f} s one by one" if peer else ""), file=sys.stderr, flush=True)
    for res in res_list:
        sub = [r for r in rows if r["resolution"] == res]
        m = mean_row(sub, "image")
        m["resolution"] = res
        if peer:
            m["speedup"] = m["seconds_one"] / m["seconds"]
        print(table(sub + [m], [c for c in COLUMNS if peer or c[0] not in ("seconds_one", "cpu_one", "speedup")]))
    load_end = os.getloadavg()
    print(f"\nmachine: {machine()}; load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end "
          f"(CPU seconds count both torch threads)")
    dump(opts.json, {"machine": machine(), "rows": rows})
    return 0
