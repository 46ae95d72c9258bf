"""``python -m bench igospp-table7``: iGOS++ against the naive objective at Table 7's lambda pairs.

iGOS++ (Khorram, Lawson & Li, ACM CHIL 2021) Table 7 compares "the optimization objective" reached by
iGOS++ and by the naive extension of I-GOS (one mask, an insertion term added to eq. 1) at four
(lambda1, lambda2) pairs at 28 x 28, "for the same objective". We read the common objective as the
naive one, eq. 1 plus the insertion loss, evaluated at each method's final mask (iGOS++'s final
solution is ``M = Md * Mi``, eq. 4)::

    L(M) = f(phi(I, B, M)) - f(phi(B, I, M)) + l1 * mean|1 - M| + l2 * BTV(I, M)

with the same lambdas the run used, probability scores, the blur baseline, no noise, at the mask
itself (not averaged over path points): :func:`faithmap.methods.igospp_objective.naive_objective`,
the mask engine's own line-search objective of the naive configuration with one path point, two
model images per photo. Per photo and pair: L for both methods, their deletion and insertion AUCs,
seconds and model images; per pair: the mean L and on how many photos iGOS++'s is lower (the
paper's claim).

``--param lambdas=1:2,1:20`` picks other pairs; other ``--param`` keys go to both runs.
"""

from __future__ import annotations

import sys

import faithmap
from faithmap.errors import FaithmapError
from faithmap.methods.igospp_objective import naive_objective
from faithmap.metrics import deletion_insertion

from faithmap.evaluation.presets import TABLE7_LAMBDAS

from .common import Options, bench, dump, gather_images, load_model, machine, resolutions, table


def _lambdas(text) -> list[tuple[float, float]]:
    try:
        pairs = [tuple(float(v) for v in p.split(":")) for p in str(text).split(",") if p.strip()]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 0 for p in pairs):
        raise FaithmapError(f"lambdas must be pairs L1:L2 of non-negative numbers, e.g. 1:2,10:20; got {text!r}")
    return pairs  # type: ignore[return-value]


@bench("igospp-table7")
def bench_table7(opts: Options) -> int:
    """iGOS++ and naive I-GOS + insertion at Table 7's (lambda1, lambda2): the objective both reach."""
    extra = dict(opts.params)
    pairs = _lambdas(extra.pop("lambdas")) if "lambdas" in extra else list(TABLE7_LAMBDAS)
    for key in ("l1", "l2", "ablation", "resolution", "final_mask"):
        if key in extra:
            raise FaithmapError(f"bench igospp-table7 sets {key} itself; use lambdas=L1:L2,... for the pairs")
    res = resolutions(opts)[0]
    if opts.iterations is not None:
        extra["iterations"] = opts.iterations
    if opts.batch_size is not None:
        extra["batch_size"] = opts.batch_size
    model = load_model(opts)
    images = gather_images(opts)
    rows = []
    for l1, l2 in pairs:
        for stem, arr in images:
            x = model.preprocess(arr)
            row = {"pair": f"{l1:g} / {l2:g}", "l1": l1, "l2": l2, "image": stem}
            for key, ablation in (("naive", "naive"), ("igospp", None)):
                e = faithmap.explain(model, x, "igos++", resolution=res, l1=l1, l2=l2, ablation=ablation, **extra)
                c = deletion_insertion(model, x, e.saliency, e.target, batch_size=extra.get("batch_size"))
                obj = naive_objective(model, x, e.saliency, e.target, l1, l2, extra.get("batch_size"))
                row.update({f"{key}:L": float(obj[0]), f"{key}:deletion": float(c.deletion_auc[0]),
                            f"{key}:insertion": float(c.insertion_auc[0]), f"{key}:seconds": e.seconds,
                            f"{key}:images": e.counts["images"]})
            row["lower"] = "yes" if row["igospp:L"] < row["naive:L"] else "no"
            rows.append(row)
            print(f"{stem} l1={l1:g} l2={l2:g}: L naive {row['naive:L']:.3f}, iGOS++ {row['igospp:L']:.3f}",
                  file=sys.stderr, flush=True)
    cols = [("pair", "l1 / l2", ""), ("image", "photo", ""), ("naive:L", "naive L", ".3f"),
            ("igospp:L", "iGOS++ L", ".3f"), ("lower", "iGOS++ lower", ""),
            ("naive:deletion", "naive del ↓", ".3f"), ("naive:insertion", "naive ins ↑", ".3f"),
            ("igospp:deletion", "iGOS++ del ↓", ".3f"), ("igospp:insertion", "iGOS++ ins ↑", ".3f"),
            ("naive:seconds", "naive s", ".1f"), ("naive:images", "naive images", ".0f"),
            ("igospp:seconds", "iGOS++ s", ".1f"), ("igospp:images", "iGOS++ images", ".0f")]
    print(table(rows, cols))
    summary = []
    for l1, l2 in pairs:
        sub = [r for r in rows if (r["l1"], r["l2"]) == (l1, l2)]
        summary.append({"pair": f"{l1:g} / {l2:g}", "naive:L": sum(r["naive:L"] for r in sub) / len(sub),
                        "igospp:L": sum(r["igospp:L"] for r in sub) / len(sub),
                        "lower": f"{sum(r['lower'] == 'yes' for r in sub)}/{len(sub)}"})
    print(f"\nmean over the {len(images)} photos (Table 7's layout), {res} x {res}:\n")
    print(table(summary, [("pair", "l1 / l2", ""), ("naive:L", "I-GOS + Ins (naive)", ".3f"),
                          ("igospp:L", "iGOS++", ".3f"), ("lower", "photos where iGOS++ is lower", "")]))
    print(f"\nmachine: {machine()}")
    dump(opts.json, {"machine": machine(), "resolution": res, "rows": rows, "summary": summary})
    return 0
