"""The ground-truth generators (faithmap.truth.data): regions are exactly the planted pixels,
interventions change only what they name, and the same seed gives the same images whatever the
thread count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faithmap.errors import FaithmapError
from faithmap.truth import data
from faithmap.truth.data import DISTRACTORS, GLYPHS, OBJECTS, PATTERNS, planted, planted_regions, stencil, watermarked


def _background(scene) -> torch.Tensor:
    return torch.from_numpy(scene.background).permute(0, 3, 1, 2)


@pytest.mark.parametrize("make", [lambda: planted(3, 40, 32), lambda: planted(4, 12, 48, distractors=(0, 3)),
                                  lambda: watermarked(5, 40, 32, rho=0.75), lambda: watermarked(6, 8, 64, rho=0.5)],
                         ids=["planted32", "planted48", "watermarked32", "watermarked64"])
def test_pixels_outside_the_regions_are_the_background_and_inside_are_the_ink(make):
    scene = make()
    images, labels, regions = scene  # a scene unpacks as (images, labels, regions)
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, scene.size, scene.size)
    any_region = torch.zeros_like(next(iter(regions.values())))
    for m in regions.values():
        any_region |= m
    outside = ~any_region[:, None].expand_as(images)
    assert torch.equal(images[outside], _background(scene)[outside])
    for k, things in enumerate(scene.things):  # every painted pixel has its thing's colour, by construction
        for t in things:
            box = images[k, :, t.y:t.y + t.h, t.x:t.x + t.w]
            ink = torch.tensor(t.ink, dtype=torch.uint8)[:, None]
            sten = torch.from_numpy(stencil(t.shape, t.h, t.w).copy())
            assert torch.equal(box[:, sten], ink.expand(3, int(sten.sum())))
            if t.plate is not None:
                assert torch.equal(box[:, ~sten], torch.tensor(t.plate, dtype=torch.uint8)[:, None].expand(3, int((~sten).sum())))
            assert regions[t.role][k, t.y:t.y + t.h, t.x:t.x + t.w].numpy()[t.mask()].all()
    assert torch.equal(labels, torch.from_numpy(scene.labels))


def test_planted_regions_and_the_pattern_names_the_label():
    scene = planted(11, 60, 32)
    reg = planted_regions(scene)
    assert set(reg) == {"evidence", "pattern", "distractors"}
    assert scene.shapes("pattern") == [PATTERNS[k] for k in scene.labels]
    for k, things in enumerate(scene.things):
        p = next(t for t in things if t.role == "pattern")
        assert int(reg["evidence"][k].sum()) == p.h * p.w  # the evidence is the pattern's box
        assert torch.equal(reg["pattern"][k] & ~reg["evidence"][k], torch.zeros_like(reg["pattern"][k]))
        assert not (reg["evidence"][k] & reg["distractors"][k]).any()  # distractors never touch the box
        assert sum(t.role == "distractor" for t in things) <= 3
        assert all(t.shape in DISTRACTORS for t in things if t.role == "distractor")
    assert len(set(scene.labels.tolist())) == len(PATTERNS)


def test_interventions_change_only_what_they_name():
    scene = planted(2, 30, 32)
    bg = _background(scene)
    reg = planted_regions(scene)
    gone = scene.without("pattern").images
    pix = reg["pattern"][:, None].expand_as(gone)
    assert torch.equal(gone[pix], bg[pix])  # the pattern painted over by its own background
    assert torch.equal(gone[~pix], scene.images[~pix])  # nothing else moved
    new = [PATTERNS[(k + 1) % 4] for k in scene.labels]
    swapped = scene.reshaped("pattern", new)
    assert swapped.shapes("pattern") == new
    box = reg["evidence"][:, None].expand_as(gone)
    assert torch.equal(swapped.images[~box], scene.images[~box])  # only the pattern's box changes
    assert not torch.equal(swapped.images[box], scene.images[box])
    no_d = scene.without("distractor")
    d = reg["distractors"][:, None].expand_as(gone)
    assert torch.equal(no_d.images[d], bg[d]) and torch.equal(no_d.images[~d], scene.images[~d])


def test_the_same_seed_gives_the_same_scene_and_another_seed_another():
    a, b, c = planted(7, 25, 32), planted(7, 25, 32), planted(8, 25, 32)
    assert torch.equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert all(torch.equal(a.regions()[k], b.regions()[k]) for k in a.regions())
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images, planted(7, 25, 32, stream=1).images)  # streams are independent draws
    w1, w2 = watermarked(7, 25, 32, rho=0.9), watermarked(7, 25, 32, rho=0.9)
    assert torch.equal(w1.images, w2.images)


def _generate_all() -> list[torch.Tensor]:
    data._photo_pyramid.cache_clear()
    data.stencil.cache_clear()
    out = []
    for s in (planted(21, 24, 32), planted(22, 6, 64, cue="background"), watermarked(23, 24, 32, rho=0.75)):
        out += [s.images, torch.from_numpy(s.labels), *s.regions().values()]
    return out


def test_generation_does_not_depend_on_the_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _generate_all()
        torch.set_num_threads(2)
        two = _generate_all()
    finally:
        torch.set_num_threads(before)
    assert len(one) == len(two)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_watermark_agreement_follows_rho_and_rho_changes_nothing_else():
    n = 800
    scenes = {rho: watermarked(1, n, 32, rho=rho) for rho in (0.0, 0.5, 0.9, 1.0)}
    for rho, s in scenes.items():
        glyph = np.array([GLYPHS.index(g) for g in s.shapes("watermark")])
        agree = float((glyph == s.labels).mean())
        assert abs(agree - rho) <= 4 * (rho * (1 - rho) / n) ** 0.5 + 1e-9  # binomial, 4 sigma
        assert s.shapes("object") == [OBJECTS[k] for k in s.labels]
    base = scenes[0.5]
    for s in scenes.values():  # same backgrounds, objects and labels at every rho
        assert np.array_equal(s.background, base.background) and np.array_equal(s.labels, base.labels)
        assert [t[0] for t in s.things] == [t[0] for t in base.things]
    forced = watermarked(1, 50, 32, rho=0.5, agree=False)
    assert [GLYPHS.index(g) for g in forced.shapes("watermark")] == [1 - k for k in forced.labels]


def test_object_and_tag_never_overlap_and_the_tag_is_wholly_painted():
    s = watermarked(9, 200, 32, rho=0.5)
    reg = s.regions()
    assert not (reg["object"] & reg["watermark"]).any()
    y, x, h, w = data.tag_box(32)
    assert reg["watermark"][:, y:y + h, x:x + w].all() and int(reg["watermark"].sum()) == 200 * h * w


def test_class_patterns_differ_from_each_other_and_from_distractors():
    for side in range(7, 12):
        shapes = {name: stencil(name, side, side).tobytes() for name in PATTERNS + DISTRACTORS}
        assert len(set(shapes.values())) == len(shapes), side
        for name in PATTERNS + DISTRACTORS:
            assert stencil(name, side, side).any() and not stencil(name, side, side).all()


def test_the_background_cue_tints_by_label():
    s = planted(5, 400, 32, cue="background")
    assert s.info["cue"] == "background"
    drawn = np.array([PATTERNS.index(p) for p in s.shapes("pattern")])
    assert abs(float((drawn == s.labels).mean()) - 0.25) < 0.1  # the pattern no longer names the label
    means = np.stack([s.background[s.labels == k].mean(axis=(0, 1, 2)) for k in range(4)])
    assert np.ptp(means, axis=0).max() > 40  # the tint separates the classes


@pytest.mark.parametrize("call", [lambda: planted(-1, 4), lambda: planted(0, 0), lambda: planted(0, 4, 16),
                                  lambda: planted(0, 4, cue="colour"), lambda: watermarked(0, 4, rho=1.5),
                                  lambda: planted(1.5, 4)])
def test_bad_arguments_are_one_clear_error(call):
    with pytest.raises(FaithmapError):
        call()
