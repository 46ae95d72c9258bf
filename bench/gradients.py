"""``python -m bench gradients``: IG and SmoothGrad against captum, in the same run.

For one photo and for a batch of 16 (the photos repeated; ``--param batches=1,16``), Integrated Gradients (20 Gauss-Legendre
steps, black baseline) and SmoothGrad (20 noise samples) are timed with faithmap (its default
``batch_size`` unless ``--batch-size`` is given) and with captum at each of a few internal batch
sizes (``internal_batch_size`` for IG, ``nt_samples_batch_size`` for SmoothGrad's NoiseTunnel), of
which the fastest is kept. Each timing is the best of ``--repeats``; runs are interleaved so that
load from other processes hits both libraries alike. Captum gets the model as a user would pass
it (eval mode, parameters as loaded); faithmap freezes parameters while it runs. Both are called
the same way: captum's ``attribute`` and faithmap's registered method function with explicit
targets (``faithmap.explain`` adds one no-grad forward of the batch for the logits it reports).
"""

from __future__ import annotations

import sys
import time
import warnings

import torch

import faithmap
from faithmap.errors import FaithmapError
from faithmap.methods.gradient import baselines_for, noise_sigma

from .common import Options, bench, dump, gather_images, load_model, machine, table

ROWS_CANDIDATES = (8, 16, 20, 32, 64)
"""Images per forward pass tried for captum (converted to its own batch parameters)."""


def _timed(model, fn):
    snap = model.counter.snapshot()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, model.counter.since(snap)["images"]


def _captum_ig(model, x, t, base, steps, ibs):
    from captum.attr import IntegratedGradients

    return IntegratedGradients(model).attribute(x, baselines=base, target=t, n_steps=steps, method="gausslegendre",
                                                internal_batch_size=ibs)


def _captum_sg(model, x, t, samples, sigma, nsb):
    from captum.attr import NoiseTunnel, Saliency

    return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=samples,
                                                  nt_samples_batch_size=nsb, stdevs=sigma, target=t, abs=False)


def captum_settings(method: str, n: int, work: int) -> list[int]:
    """Captum's batch parameter for each candidate of :data:`ROWS_CANDIDATES` (deduplicated).

    IG: ``internal_batch_size`` (rows per pass, at least ``n``); SmoothGrad: ``nt_samples_batch_size``
    (samples per image per pass, so ``n`` times that many rows).
    """
    out: list[int] = []
    for rows in ROWS_CANDIDATES:
        if method == "ig":
            v = min(max(n, rows), n * work)
            v = n * max(1, v // n)  # captum rounds down to whole steps
        else:
            v = min(work, max(1, rows // n))
        if v not in out:
            out.append(v)
    return out


def _ints(v) -> tuple[int, ...]:
    vals = v if isinstance(v, (tuple, list)) else (v,)
    try:
        out = tuple(int(u) for u in vals)
    except (TypeError, ValueError):
        out = ()
    if not out or min(out) < 1:
        raise FaithmapError(f"--param batches expects positive batch sizes, e.g. 1,16; got {v!r}")
    return out


def _names(v) -> tuple[str, ...]:
    vals = tuple(str(u).strip() for u in (v if isinstance(v, (tuple, list)) else str(v).split(",")))
    if not vals or any(u not in ("ig", "smoothgrad") for u in vals):
        raise FaithmapError(f"--param methods expects ig and/or smoothgrad; got {v!r}")
    return vals


@bench("gradients")
def bench_gradients(opts: Options) -> int:
    """IG (20 steps) and SmoothGrad (20 samples) on EfficientNet-Lite0: faithmap vs captum's best batch."""
    warnings.filterwarnings("ignore", module="captum")
    model = load_model(opts)
    ig_fn, sg_fn = faithmap.METHODS.get("ig").fn, faithmap.METHODS.get("smoothgrad").fn
    photos = gather_images(opts)
    extra = dict(opts.params)
    unknown = set(extra) - {"batches", "methods"}
    if unknown:
        raise FaithmapError(f"bench gradients takes --param batches=1,16 and methods=ig,smoothgrad; not {sorted(unknown)[0]}")
    batches = _ints(extra.get("batches", (1, 16)))
    methods = _names(extra.get("methods", ("ig", "smoothgrad")))
    steps = 20
    repeats = opts.repeats
    rows = []
    for n in batches:
        arrs = [photos[i % len(photos)][1] for i in range(n)]
        x = model.preprocess(arrs)
        with torch.no_grad():
            t = model(x).argmax(1)
        base = baselines_for(model, x, "black", [])
        sigma = float(noise_sigma(x[:1], 0.15)[0])
        for method in methods:
            if method == "ig":
                ours_fn = lambda: ig_fn(model, x, t, steps=steps, baseline="black",  # noqa: E731
                                        quadrature="gausslegendre", batch_size=opts.batch_size).attribution
                peer = lambda v: _captum_ig(model, x, t, base, steps, v)  # noqa: E731
            else:
                ours_fn = lambda: sg_fn(model, x, t, samples=steps, sigma=sigma,  # noqa: E731
                                        batch_size=opts.batch_size).attribution
                peer = lambda v: _captum_sg(model, x, t, steps, sigma, v)  # noqa: E731
            settings = captum_settings(method, n, steps)
            best_ours, ours_images, ref = float("inf"), 0, None
            best_peer = {v: (float("inf"), 0) for v in settings}
            for _ in range(repeats):
                ref, s, imgs = _timed(model, ours_fn)
                best_ours, ours_images = min(best_ours, s), imgs
                for v in settings:
                    out, s, imgs = _timed(model, lambda: peer(v))
                    best_peer[v] = (min(best_peer[v][0], s), imgs)
            v_best = min(best_peer, key=lambda v: best_peer[v][0])
            agree = ""
            if method == "ig":  # same computation: the attributions must agree
                out = peer(v_best)
                agree = f"{float((ref - out).abs().max() / out.abs().max()):.1e}"
            param = "internal_batch_size" if method == "ig" else "nt_samples_batch_size"
            row = {"method": f"{method} ({steps} {'steps' if method == 'ig' else 'samples'})", "images": n,
                   "ours_s": best_ours, "ours_images": ours_images, "captum_s": best_peer[v_best][0],
                   "captum_images": best_peer[v_best][1], "captum_setting": f"{param}={v_best}",
                   "ratio": best_peer[v_best][0] / best_ours, "agree": agree,
                   "all": {str(v): s for v, (s, _) in best_peer.items()}}
            rows.append(row)
            tried = ", ".join(f"{v}: {s:.2f} s" for v, (s, _) in best_peer.items())
            print(f"{row['method']}, {n} image(s): faithmap {best_ours:.2f} s ({ours_images} images); captum {tried}",
                  file=sys.stderr, flush=True)
    print(table(rows, [("method", "method", ""), ("images", "batch", ""), ("ours_s", "faithmap s", ".2f"),
                       ("ours_images", "faithmap model images", ".0f"), ("captum_s", "captum best s", ".2f"),
                       ("captum_images", "captum model images", ".0f"), ("captum_setting", "captum's best setting", ""),
                       ("ratio", "captum s / faithmap s", ".2f"), ("agree", "max rel. diff", "")]))
    print(f"\nfaithmap batch_size: {opts.batch_size or 'default'}; best of {repeats} run(s) each; captum settings "
          f"tried per row: rows per pass {', '.join(map(str, ROWS_CANDIDATES))} (as captum's parameter)")
    print(f"machine: {machine()}")
    dump(opts.json, {"machine": machine(), "rows": rows})
    return 0
