"""Pictures: heatmaps over photos, deletion/insertion curves, the paper-style strip, and
:func:`show`, the figure of an explanation for notebooks.

Drawing only; every function takes tensors or arrays computed elsewhere. Figures are
:class:`matplotlib.figure.Figure` objects on the Agg canvas: no pyplot, no ``matplotlib.use``, so
importing or drawing never changes the backend a notebook or GUI uses.
"""

from .draw import Picture, colorize, is_signed, overlay, save_curves, save_heatmap, save_strip, to_image
from .show import show

__all__ = ["Picture", "colorize", "is_signed", "overlay", "save_curves", "save_heatmap", "save_strip", "show",
           "to_image"]
