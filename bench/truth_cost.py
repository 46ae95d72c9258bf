"""What the full default ``faithmap truth`` run would cost, projected from timed pieces.

Run from the repository root::

    OMP_NUM_THREADS=1 python -m bench truth-cost --param images=4 --json cost.json

The full default run (tiers 0-2, the small CNN and the small ViT, 3 model seeds, 8 images per
scenario, every method at its fast settings and I-GOS, iGOS++, RISE, occlusion and Extremal
Perturbation at their defaults, the proxies at full curves) takes hours on a 2-core CPU, so it is
projected here: for each tier 1-2 architecture, (a) training's CPU seconds per image-epoch (one epoch
on 400 generated images), (b) each method's CPU seconds and model images per image at the settings of
the full run (:func:`faithmap.truth.run.method_params`) and the proxies' per map, on ``images``
held-out images of an (untrained: cost does not depend on the weights, except iterations that stop
early) model. The projection multiplies them by the run's counts: the default recipes' images x
epochs (:data:`faithmap.truth.tier1.RECIPES`, :data:`faithmap.truth.tier2.RECIPES`), the
scenarios, seeds and images. Tier 0 is not projected here (BENCHMARKS.md times it). CPU seconds
(process time) are used because the machine is shared: wall seconds on a quiet 2-core machine are
about CPU seconds / 1.0-1.6 (measured 1 to 2 threads busy).
"""

from __future__ import annotations

import time

from faithmap.api import explain
from faithmap.registry import METHODS
from faithmap.truth import TruthConfig, tier1, tier2
from faithmap.truth.proxies import proxy_scores
from faithmap.truth.run import method_params

from .common import Options, bench, dump


def _cpu(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - t0


@bench("truth-cost")
def bench_truth_cost(opts: Options) -> int:
    """Projected seconds of the full default faithmap truth run, from timed pieces."""
    n = int(opts.params.get("images", 4))
    archs = str(opts.params.get("archs", "cnn,vit")).split(",")
    cfg = TruthConfig(quick=False)
    seeds, per = len(cfg.seed_list), cfg.images
    report: dict = {"images_timed": n, "archs": {}}
    total = {"train": 0.0, "explain": 0.0, "proxies": 0.0}
    print("| arch | method | fast | CPU s / image | wall s / image | model images / image |")
    print("|---|---|---|---|---|---|")
    for arch in archs:
        sc, cpu, _ = _cpu(lambda: tier1.build(0, arch=arch, n_train=400, epochs=1, n_test=n, n_gate=50))
        per_epoch_image = sc.info["train_cpu_seconds"] / 400
        methods = {}
        for name in METHODS.names():
            params = method_params(name, cfg, int(sc.x.shape[-1]))
            if "seed" in METHODS.get(name).params:
                params["seed"] = list(range(n))
            try:
                e, c, w = _cpu(lambda: explain(sc.model, sc.x, name, target=sc.target, **params))
            except Exception as exc:  # noqa: BLE001 - a method that cannot run on this model is skipped in a run too
                methods[name] = {"skipped": str(exc)}
                continue
            methods[name] = {"cpu": c / n, "wall": w / n, "model_images": e.counts.get("images", 0) / n,
                             "fast": cfg.fast_for(name)}
            print(f"| {arch} | {name} | {'yes' if cfg.fast_for(name) else 'no'} | {c / n:.3f} | {w / n:.3f} | "
                  f"{e.counts.get('images', 0) / n:.0f} |", flush=True)
        sal = explain(sc.model, sc.x, "gradcam", target=sc.target).saliency
        _, proxy_cpu, _ = _cpu(lambda: proxy_scores(sc.model, sc.x, sal, sc.target, seeds=list(range(n))))
        proxy_cpu /= n
        image_epochs = (tier1.RECIPES[arch].n_train * tier1.RECIPES[arch].epochs
                        + len(tier2.RHOS) * tier2.RECIPES[arch].n_train * tier2.RECIPES[arch].epochs) * seeds
        scenarios = (1 + len(tier2.RHOS)) * seeds
        ran = [m for m in methods.values() if "cpu" in m]
        proj = {"train": image_epochs * per_epoch_image,
                "explain": scenarios * per * sum(m["cpu"] for m in ran),
                "proxies": scenarios * per * len(ran) * proxy_cpu}
        for k in total:
            total[k] += proj[k]
        report["archs"][arch] = {"train_cpu_per_image_epoch": per_epoch_image, "image_epochs": image_epochs,
                                 "scenarios": scenarios, "images_per_scenario": per, "methods": methods,
                                 "proxy_cpu_per_map": proxy_cpu, "projected_cpu_seconds": proj,
                                 "model_images_per_image_all_methods": sum(m["model_images"] for m in ran)}
        print(f"\n{arch}: training {per_epoch_image * 1e3:.2f} CPU ms per image-epoch x {image_epochs} image-epochs; "
              f"{scenarios} scenarios x {per} images; all methods {sum(m['cpu'] for m in ran):.2f} CPU s and "
              f"{sum(m['model_images'] for m in ran):.0f} model images per image; proxies {proxy_cpu:.3f} CPU s per map; "
              f"projected CPU s: " + ", ".join(f"{k} {v:.0f}" for k, v in proj.items()) + "\n")
    report["projected_cpu_seconds"] = total
    print("projected CPU seconds, tiers 1-2: " + ", ".join(f"{k} {v:.0f}" for k, v in total.items())
          + f"; total {sum(total.values()) / 3600:.2f} CPU hours")
    dump(opts.json, report)
    return 0

