"""A griffe extension for the API reference: faithmap's docstrings cite code with Sphinx roles
(``:func:`explain```, ``:class:`~faithmap.models.Classifier```, ``:mod:`.store```); mkdocstrings renders
Markdown. Each role becomes a code span wrapped in an *optional* cross-reference: a link where the
target is documented on the site, plain code where it is not (so an internal helper named in a
docstring is no broken reference, while a mistyped name in a documented object still renders)."""

from __future__ import annotations

import re

from griffe import Extension, Object

ROLE = re.compile(r":(?:py:)?(func|class|data|mod|meth|attr|exc|obj):`(~?)([^`<>]+?)`")

PAPERS = {
    "igos": "I-GOS (Qi, Khorram & Li, AAAI 2020)",
    "igos_plus_plus": "iGOS++ (Khorram, Lawson & Li, ACM CHIL 2021)",
    "aop_sigcam": "AOP/SIGCAM (Zhang, Rao & Yang, AAAI 2021)",
    "gad": "GAD (Mazini Rodrigues, Boutry & Najman, 2024)",
    "expected_gradcam": "Expected Grad-CAM (Buono et al., arXiv 2406.01274, 2024)",
}
SEED_FILE = re.compile(r"(``|`)?\b(" + "|".join(PAPERS) + r")\.txt\b(``|`)?")
"""Some docstrings name a paper by the file of the project's seed notes (``igos.txt``); the site cites
the paper instead (public text cites papers as references, never those file names)."""


def _module(obj: Object) -> Object:
    while not obj.is_module:
        obj = obj.parent
    return obj


def _resolve(obj: Object, name: str) -> str:
    """The full path of ``name`` as written in ``obj``'s docstring (relative, local or dotted)."""
    if name.startswith("."):
        module = _module(obj)
        base = module if module.is_package else module.parent
        for _ in range(len(name) - len(name.lstrip(".")) - 1):
            base = base.parent
        return f"{base.path}.{name.lstrip('.')}"
    head, _, rest = name.partition(".")
    if head == "faithmap":
        return name
    try:
        full = obj.resolve(head)
    except Exception:  # noqa: BLE001  (griffe raises NameResolutionError or a lookup error)
        scope = obj.parent if obj.parent is not None else obj
        try:
            full = scope.resolve(head)
        except Exception:  # noqa: BLE001
            return name
    return f"{full}.{rest}" if rest else full


class SphinxRoles(Extension):
    """Turn Sphinx roles in every docstring into optional cross-references."""

    def on_object(self, *, obj: Object, **kwargs) -> None:  # noqa: D102
        doc = obj.docstring
        if doc is None:
            return
        doc.value = SEED_FILE.sub(lambda m: PAPERS[m.group(2)], doc.value)
        if ":" not in doc.value:
            return

        def sub(m: re.Match) -> str:
            role, short, name = m.group(1), m.group(2), m.group(3).strip()
            shown = name.split(".")[-1] if short else name.lstrip(".")
            if role in ("func", "meth"):
                shown += "()"
            path = _resolve(obj, name)
            return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'

        doc.value = ROLE.sub(sub, doc.value)
