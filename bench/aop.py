"""``python -m bench aop``: the ablation of AOP/SIGCAM's Table 1 (Zhang, Rao & Yang, AAAI 2021) on the sample photos.

GradCAM, WGradCAM, EMP (Fong-Vedaldi ``mask``), I-GOS, GradCAM + EMP, GradCAM + I-GOS and SIGCAM,
each with its registered defaults, on EfficientNet-Lite0: deletion, insertion and over-all
(insertion - deletion) AUCs, seconds and model images per photo and on average.

The paper's speed claim ("Eq. 6 will converge much faster than I-GOS") is measured on the line-search
objective, which AOP+I-GOS and I-GOS share (same data term, regulariser and full blur once the
start-up is over): for each AOP+I-GOS run, the first iteration after the start-up whose objective is
at or below I-GOS's final objective on that photo, and the model images spent up to it (base stage
included), against I-GOS's total images from its all-ones start. Counts are exact; seconds depend on
the machine's load.
"""

from __future__ import annotations

import sys
import time

from faithmap.errors import FaithmapError

from .common import Options, bench, dump, explain_and_curves, gather_images, load_model, machine, reference, table

ENTRIES: dict[str, tuple[str, str, dict]] = {  # key: (label, method, params)
    "gradcam": ("GradCAM", "gradcam", {}),
    "wgradcam": ("WGradCAM", "wgradcam", {}),
    "emp": ("EMP", "mask", {}),
    "igos": ("I-GOS", "igos", {}),
    "gradcam+emp": ("GradCAM + EMP", "aop", {"base": "gradcam", "refine": "mask"}),
    "gradcam+igos": ("GradCAM + I-GOS", "aop", {"base": "gradcam", "refine": "igos"}),
    "sigcam": ("SIGCAM", "sigcam", {}),
}
PAPER_TABLE1 = reference("aop_paper_table1")
"""The paper's Table 1 (Inception v3, 5,000 ImageNet images): deletion, insertion, over-all (%)."""


def reach(loss: list[float], images: list[int], goal: float, warmup: int) -> tuple[int | None, int | None]:
    """(iteration, cumulative model images) at which ``loss`` first reaches ``goal``, counting only
    iterations after the start-up (whose objective uses the weaker blur); (None, None) if never."""
    for it in range(warmup, len(loss)):
        if loss[it] <= goal:
            return it + 1, images[it]
    return None, None


@bench("aop")
def bench_aop(opts: Options) -> int:
    """AOP / SIGCAM ablation per photo: deletion, insertion, over-all, seconds, model images."""
    extra = dict(opts.params)
    keys = [k.strip() for k in str(extra.pop("methods", ",".join(ENTRIES))).split(",") if k.strip()]
    for k in keys:
        if k not in ENTRIES:
            raise FaithmapError(f"bench aop runs {', '.join(ENTRIES)}; got {k!r}")
    if opts.resolution or opts.iterations:
        raise FaithmapError("bench aop runs every method with its registered defaults (no --resolution/--iterations)")
    model = load_model(opts)
    images = gather_images(opts)
    rows: list[dict] = []
    out = {"machine": machine(), "methods": keys, "rows": rows, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for stem, arr in images:
        x = model.preprocess(arr)
        per: dict[str, dict] = {}
        for k in keys:
            label, method, params = ENTRIES[k]
            e, c = explain_and_curves(model, x, method, params, opts.batch_size)
            r = {"image": stem, "key": k, "method": label, "deletion": float(c.deletion_auc[0]),
                 "insertion": float(c.insertion_auc[0]), "overall": float(c.overall[0]), "seconds": e.seconds,
                 "images": e.counts["images"], "grad_images": e.counts["grad_images"]}
            if "loss" in e.history and e.history["loss"].numel():
                r["loss"] = e.history["loss"][0].tolist()
                r["iter_images"] = list(e.history.get("images", []))
                r["warmup"] = int(e.params.get("warmup", 0))
            per[k] = r
            rows.append(r)
            print(f"{stem}: {label}: deletion {r['deletion']:.3f}, insertion {r['insertion']:.3f}, over-all "
                  f"{r['overall']:.3f}, {r['seconds']:.1f} s, {r['images']} images", file=sys.stderr, flush=True)
        if "igos" in per:
            goal = per["igos"]["loss"][-1]
            for k in ("gradcam+igos", "sigcam"):
                if k in per:
                    r = per[k]
                    it, n = reach(r["loss"], r["iter_images"], goal, r["warmup"])
                    r.update(reach_iteration=it, reach_images=n,
                             reach_ratio=(per["igos"]["images"] / n) if n else None,
                             final_loss=r["loss"][-1], igos_final_loss=goal)
        dump(opts.json, out)  # after every photo, so a long run keeps what it measured
    _report(rows, keys, [s for s, _ in images])
    print(f"\nmachine: {machine()}")
    dump(opts.json, out)
    return 0


def _report(rows: list[dict], keys: list[str], stems: list[str]) -> None:
    cols = [("image", "photo", ""), ("method", "method", ""), ("deletion", "deletion ↓", ".3f"),
            ("insertion", "insertion ↑", ".3f"), ("overall", "over-all ↑", ".3f"), ("seconds", "seconds", ".1f"),
            ("images", "model images", ".0f"), ("grad_images", "with grad", ".0f")]
    print(table(rows, cols))
    means = []
    for k in keys:
        sub = [r for r in rows if r["key"] == k]
        m = {"method": ENTRIES[k][0], "n": len(sub)}
        for f in ("deletion", "insertion", "overall", "seconds", "images", "grad_images"):
            m[f] = sum(r[f] for r in sub) / len(sub)
        if k in PAPER_TABLE1:
            m["paper"] = "{:.2f} / {:.2f} / {:.2f}".format(*(v / 100 for v in PAPER_TABLE1[k]))
        means.append(m)
    print(f"\nMean over {len(stems)} photo(s) (paper: Table 1, Inception v3 on 5,000 ImageNet images, del / ins / "
          f"over-all):\n")
    print(table(means, [("method", "method", ""), ("n", "photos", ""), *cols[2:], ("paper", "paper", "")]))
    conv = [r for r in rows if "reach_ratio" in r]
    if conv:
        print("\nIterations / model images to reach I-GOS's final line-search objective (after the start-up):\n")
        print(table(conv, [("image", "photo", ""), ("method", "method", ""), ("igos_final_loss", "I-GOS final F", ".4f"),
                           ("final_loss", "final F", ".4f"), ("reach_iteration", "reached at iteration", ""),
                           ("reach_images", "model images then", ""), ("images", "total images", ".0f"),
                           ("reach_ratio", "I-GOS images / images to reach", ".2f")]))
    by = {k: {r["image"]: r for r in rows if r["key"] == k} for k in keys}
    if {"sigcam", "wgradcam", "igos"} <= set(keys):
        s = [by["sigcam"][p]["overall"] for p in stems]
        wg = [by["wgradcam"][p]["overall"] for p in stems]
        ig = [by["igos"][p]["overall"] for p in stems]
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        print(f"\nclaim 1, mean over-all SIGCAM {mean(s):.3f} > WGradCAM {mean(wg):.3f}: "
              f"{'yes' if mean(s) > mean(wg) else 'no'}; > I-GOS {mean(ig):.3f}: {'yes' if mean(s) > mean(ig) else 'no'} "
              f"(per photo: above WGradCAM {sum(a > b for a, b in zip(s, wg))}/{len(s)}, above I-GOS "
              f"{sum(a > b for a, b in zip(s, ig))}/{len(s)})")
        rr = [by["sigcam"][p].get("reach_ratio") for p in stems]
        ok = [r is not None and r >= 2 for r in rr]
        eq = [by["sigcam"][p]["overall"] >= by["igos"][p]["overall"] for p in stems]
        print(f"claim 2, SIGCAM reaches I-GOS's final objective with >= 2x fewer model images: {sum(ok)}/{len(ok)} "
              f"photos (ratios: {', '.join('never' if r is None else f'{r:.2f}' for r in rr)}); final over-all >= "
              f"I-GOS's: {sum(eq)}/{len(eq)}")
