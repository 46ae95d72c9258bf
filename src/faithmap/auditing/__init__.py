"""Audit a classifier across a labelled dataset: :func:`faithmap.audit` and ``faithmap audit``.

What does the model rely on, across the data, and is it there? The audit explains every image,
looks for places and kinds of patches the maps keep returning to (candidate shortcuts: a tag in a
corner, a text band, a watermark), and keeps as *findings* only the candidates whose removal hurts
the model more than removing random regions of the same size. (iGOS++, Khorram et al., ACM CHIL
2021, found a COVID-19 x-ray model reading the letters printed on the films by looking at many maps
one at a time; the audit looks at them together and checks what it finds.)

The package is named ``auditing`` so that ``faithmap.audit`` is the function, as ``faithmap.evaluate``
is beside :mod:`faithmap.evaluation`. Modules, each importing only those before it: :mod:`.config`
(:class:`AuditConfig`), :mod:`.maps` (a map's common grid, salient patch and embedding),
:mod:`.worker` (step 1 on a batch, run by the evaluation's engines; the row schema), :mod:`.plan`,
:mod:`.candidates` (step 2), :mod:`.verify` (step 3), :mod:`.page` (step 4) and :mod:`.runner`.
"""

from .config import DEFAULT_METHOD, OPTION_NAMES, AuditConfig
from .runner import AuditResult, audit

__all__ = ["DEFAULT_METHOD", "OPTION_NAMES", "AuditConfig", "AuditResult", "audit"]
