"""Pictures: heatmaps over photos, deletion/insertion curves, the paper-style strip.

Drawing only; every function takes tensors or arrays computed elsewhere.
"""

from .draw import colorize, overlay, save_curves, save_heatmap, save_strip, to_image

__all__ = ["colorize", "overlay", "save_curves", "save_heatmap", "save_strip", "to_image"]
