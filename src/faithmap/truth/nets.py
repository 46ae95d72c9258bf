"""The networks trained by the ground-truth tiers: a small CNN, a small vision transformer and
torchvision's ResNet-18, each with the name of its CAM layer.

Initialisation draws from the seed alone (the global RNG is forked and restored, so the user's
random state is left as it was); no dropout, so training is a function of the seed and the data.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FaithmapError

ARCHS = ("cnn", "vit", "resnet18")


class SmallCNN(nn.Module):
    """Four 3x3 convolutions with batch norm and ReLU, two 2x2 max-pools, global average pooling
    and a linear classifier (class activation maps, Zhou et al., CVPR 2016, read ``features.11``,
    the last ReLU: an 8 x 8 grid at 32 px)."""

    cam_layer = "features.11"

    def __init__(self, classes: int, width: int = 32):
        super().__init__()
        c = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(*block(3, c // 2), nn.MaxPool2d(2), *block(c // 2, c), nn.MaxPool2d(2),
                                      *block(c, 2 * c), *block(2 * c, 2 * c))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp * dim), nn.GELU(), nn.Linear(mlp * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """A vision transformer (Dosovitskiy et al., ICLR 2021) at a small scale: ``patch`` x ``patch``
    patches embedded by a convolutional stem (for ``patch=4``, three 3x3 convolutions with batch norm
    and ReLU, the last two of stride 2, and a 1x1 convolution, so that each token sees 11 x 11 pixels:
    the early convolutions of Xiao et al., NeurIPS 2021, which let a small transformer learn from few
    images; ``stem=False`` embeds each patch linearly as the original), learned position embeddings,
    ``depth`` pre-norm blocks, a final LayerNorm, the mean of the patch tokens (no class token, as the
    plain ViT baselines of Beyer, Zhai & Kolesnikov, 2022) and a linear head.

    ``num_prefix_tokens = 0`` tells :func:`faithmap.models.layers.prefix_tokens` that every token is
    a patch. Its CAM layer is the final LayerNorm (``norm``): its tokens are what the head averages,
    the counterpart of a CNN's last convolutional map (an 8 x 8 grid at 32 px).
    """

    num_prefix_tokens = 0
    cam_layer = "norm"

    def __init__(self, classes: int, size: int = 32, patch: int = 4, dim: int = 64, depth: int = 4, heads: int = 4,
                 stem: bool = True):
        super().__init__()
        if size % patch:
            raise FaithmapError(f"the ViT needs a size divisible by its patch ({patch}), got {size}")
        if stem and patch == 4:
            c = dim // 4

            def conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
                return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

            self.patch_embed: nn.Module = nn.Sequential(*conv(3, c, 1), *conv(c, 2 * c, 2), *conv(2 * c, 2 * c, 2),
                                                        nn.Conv2d(2 * c, dim, 1))
        else:
            self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, (size // patch) ** 2, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def reset(self) -> None:
        """ViT initialisation: truncated-normal (std 0.02) position embeddings and linear weights."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        t = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        for blk in self.blocks:
            t = blk(t)
        return self.head(self.norm(t).mean(1))


def build(arch: str, classes: int, size: int, seed: int) -> tuple[nn.Module, str]:
    """(network, CAM layer name) of ``arch``, initialised from ``seed`` alone."""
    if arch not in ARCHS:
        raise FaithmapError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if arch == "cnn":
            net: nn.Module = SmallCNN(classes)
            return net, SmallCNN.cam_layer
        if arch == "vit":
            vit = SmallViT(classes, size)
            vit.reset()
            return vit, SmallViT.cam_layer
        import torchvision

        net = torchvision.models.resnet18(weights=None, num_classes=classes)
        return net, "layer4"


__all__ = ["ARCHS", "SmallCNN", "SmallViT", "build"]
