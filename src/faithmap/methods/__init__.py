"""Explanation methods. Importing this package registers every method in ``faithmap.METHODS``:
each module of this package is imported, and registers its methods with
:func:`faithmap.registry.register_method`."""

from .._discover import import_submodules

MODULES = import_submodules(__name__, __path__)
