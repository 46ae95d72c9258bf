"""Per-layer backward rules, applied by one context manager: the seam of guided backprop, deconvnet
and excitation backprop (and later LRP), after zennit's composites (Anders et al. 2021).

A :class:`Rule` says how one module passes the backward signal to its input: ``backward(call, x,
grad)`` returns the signal at the module's input ``x`` from the signal ``grad`` at its output. Forward
values never change: the module runs as usual and its output is handed on through an autograd
function whose backward is the rule's. An :class:`OpRule` does the same for a torch function that
has no module to hook (a residual sum written ``a + b``, functional average pooling). A
:class:`Composite` maps module types (or a predicate on name and module) to rules, first match
first, and torch functions to op rules. :func:`apply_rules` registers the rules on the model's
modules and, when the composite has op rules, enters a ``TorchFunctionMode`` that routes those
functions through them; in ``finally`` it removes every hook, leaves the mode and restores the
``inplace`` flags it turned off (modules run out of place while the block runs, so that no in-place
operation overwrites an output the rules hand on).

Rules see only tensors that require grad: below the layer where a backward pass stops (a detached
read-out layer, inputs that do not require grad) nothing is wrapped and nothing costs extra.

A new rule family (an LRP epsilon or gamma rule) is a :class:`Rule` subclass and a composite in one
file; the methods that use it open ``with apply_rules(model, composite):`` around their passes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import FaithmapError

Selector = Union[type, tuple, Callable[[str, nn.Module], bool]]
"""Which modules a rule applies to: a module class, a tuple of classes, or ``fn(name, module) -> bool``."""


# ----------------------------------------------------------------------------------------------
# rules
# ----------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Call:
    """One call of a hooked module in a forward pass: the module, its rule and per-call ``state``
    (what a rule learns in the forward pass or caches between backward passes)."""

    module: nn.Module
    rule: "Rule"
    output: torch.Tensor | None = None
    state: dict[str, Any] = field(default_factory=dict)


class Rule:
    """How one module passes the backward signal to its (first) input.

    ``backward(call, x, grad)`` gets the module's input ``x`` and the signal ``grad`` at its output
    and returns the signal at ``x``. ``forward(call, x, y)`` sees each call once its output ``y``
    (the tensor handed on) exists, to record what the backward pass will need. A rule with
    ``wraps = False`` only observes: its module keeps its own backward (the gradient), and
    ``forward(None, x, output)`` sees the call.
    """

    wraps = True

    def forward(self, call: Call, x: torch.Tensor, y: torch.Tensor) -> None:  # noqa: D102
        return None

    def backward(self, call: Call, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        raise NotImplementedError


class OpRule:
    """How a torch function (an op with no module) passes the backward signal.

    ``__call__(func, args, kwargs)`` returns the function's result computed through an autograd
    function of the rule's, or ``NotImplemented`` to let the call run as usual (arguments the rule
    does not cover, tensors that do not require grad).
    """

    def __call__(self, func: Callable, args: tuple, kwargs: dict) -> Any:  # noqa: D102
        raise NotImplementedError


class _RuleFunction(torch.autograd.Function):
    """The module's output, unchanged, with the rule's backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, call: Call) -> torch.Tensor:  # noqa: D102
        ctx.call = call
        ctx.save_for_backward(x)
        out, call.output = call.output, None
        return out.detach()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (x,) = ctx.saved_tensors
        with paused_ops():
            return ctx.call.rule.backward(ctx.call, x, grad), None


def _module_hook(rule: Rule):
    def hook(module, args, output):
        x = args[0] if args else None
        if not (isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor) and torch.is_grad_enabled()
                and x.requires_grad and x.is_floating_point()):
            return None
        if not rule.wraps:
            rule.forward(None, x, output)
            return None
        call = Call(module, rule, output)
        y = _RuleFunction.apply(x, call)
        rule.forward(call, x, y)
        return y

    return hook


# ----------------------------------------------------------------------------------------------
# op rules: a torch function mode that routes chosen functions through their rules
# ----------------------------------------------------------------------------------------------
_PAUSED = [0]


@contextlib.contextmanager
def paused_ops() -> Iterator[None]:
    """Op rules do not apply inside the block (rules' own backward computations run here)."""
    _PAUSED[0] += 1
    try:
        yield
    finally:
        _PAUSED[0] -= 1


class _OpMode(TorchFunctionMode):
    def __init__(self, rules: Mapping[Callable, OpRule]):
        super().__init__()
        self.rules = dict(rules)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        rule = self.rules.get(func)
        if rule is not None and not _PAUSED[0] and torch.is_grad_enabled():
            out = rule(func, args, kwargs)
            if out is not NotImplemented:
                return out
        return func(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# composites and the context manager
# ----------------------------------------------------------------------------------------------
@dataclass
class Composite:
    """Module rules (``(selector, rule)`` pairs, the first matching selector wins) and op rules
    (``{torch function: rule}``) applied together by :func:`apply_rules`."""

    module_rules: Sequence[tuple[Selector, Rule]] = ()
    op_rules: Mapping[Callable, OpRule] = field(default_factory=dict)

    def rule_for(self, name: str, module: nn.Module) -> Rule | None:
        """The rule of ``module`` (called ``name`` in the model), or None."""
        for selector, rule in self.module_rules:
            if isinstance(selector, (type, tuple)):
                if isinstance(module, selector):
                    return rule
            elif selector(name, module):
                return rule
        return None


@contextlib.contextmanager
def apply_rules(model: nn.Module, composite: Composite) -> Iterator[Composite]:
    """Inside the block, ``model`` back-propagates by ``composite``'s rules; forward values are unchanged.

    Registers a forward hook on every module that a module rule selects and, for op rules, enters a
    torch function mode; modules with ``inplace=True`` run out of place. In ``finally`` (also when
    the block raises) the hooks are removed, the mode is left and the ``inplace`` flags are restored.
    """
    handles = []
    inplace: list[nn.Module] = []
    mode = _OpMode(composite.op_rules) if composite.op_rules else None
    entered = False
    try:
        for name, m in model.named_modules():
            if getattr(m, "inplace", None) is True:
                m.inplace = False
                inplace.append(m)
            rule = composite.rule_for(name, m)
            if rule is not None:
                handles.append(m.register_forward_hook(_module_hook(rule)))
        if mode is not None:
            mode.__enter__()
            entered = True
        yield composite
    finally:
        if entered:
            mode.__exit__(None, None, None)
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True


# ----------------------------------------------------------------------------------------------
# shared pieces of rules
# ----------------------------------------------------------------------------------------------
def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + eps * sign(z)`` (``+eps`` where ``z == 0``): a denominator that keeps its sign and is
    never 0 for ``eps > 0`` (the stabiliser of zennit and of the LRP epsilon rule)."""
    if eps == 0:
        return torch.where(z == 0, 1.0, z)
    return z + torch.where(z < 0, -eps, eps)


@contextlib.contextmanager
def swapped_parameters(module: nn.Module, **params: torch.Tensor | None) -> Iterator[nn.Module]:
    """``module`` with some registered parameters replaced by tensors (or None) inside the block, so
    that its own ``forward`` (any padding or reshaping it does) runs with modified weights."""
    old = {}
    try:
        for name, value in params.items():
            if name not in module._parameters:
                raise FaithmapError(f"{type(module).__name__} has no plain parameter {name!r} (parametrised "
                                    f"weights are not supported by this rule)")
            old[name] = module._parameters[name]
            module._parameters[name] = value
        yield module
    finally:
        for name, value in old.items():
            module._parameters[name] = value


def local_forward(module: nn.Module, x: torch.Tensor, **params: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(leaf, module.forward(leaf))`` with ``params`` swapped in and a leaf copy of ``x`` that
    requires grad, for the vector-Jacobian products of a rule (hooks do not run: ``forward`` is
    called directly)."""
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad(), swapped_parameters(module, **params):
        return leaf, module.forward(leaf)


# ----------------------------------------------------------------------------------------------
# rectifier rules: guided backprop and deconvnet
# ----------------------------------------------------------------------------------------------
def rectifier_cap(module: nn.Module) -> float | None:
    """The upper clip ``c`` of a rectifier module (``inf`` for ``nn.ReLU``, 6 for ``nn.ReLU6``, ``c`` for
    ``nn.Hardtanh(0, c)``), or None when ``module`` is not a rectifier."""
    if isinstance(module, nn.ReLU):
        return math.inf
    if isinstance(module, nn.Hardtanh) and float(module.min_val) == 0.0 and float(module.max_val) > 0:
        return float(module.max_val)  # nn.ReLU6 is Hardtanh(0, 6)
    return None


class RectifierRule(Rule):
    """A rectifier ``y = clamp(x, 0, c)`` whose backward is ``relu(g) * gate(x)``.

    guided (Springenberg et al. 2015): gate = ``0 < x < c``, the true gradient's gate, so only
    positive signals pass where the unit is active; deconv (Zeiler & Fergus 2014): gate = ``x < c``,
    the rectifier's gate dropped but the clip at ``c`` keeping its true gradient.
    """

    def __init__(self, deconv: bool):
        self.deconv = bool(deconv)

    def backward(self, call, x, grad):  # noqa: D102
        cap = rectifier_cap(call.module)
        gate = x < cap if self.deconv else (x > 0) & (x < cap)
        return grad.clamp_min(0) * gate


def _is_rectifier(name: str, module: nn.Module) -> bool:
    return rectifier_cap(module) is not None


def rectifier_composite(rule: str) -> Composite:
    """Guided backprop (``"guided"``) or deconvnet (``"deconv"``) at every rectifier module."""
    if rule not in ("guided", "deconv"):
        raise FaithmapError(f"unknown rectifier rule {rule!r}; choose from: guided, deconv")
    return Composite([(_is_rectifier, RectifierRule(rule == "deconv"))])


# ----------------------------------------------------------------------------------------------
# excitation backprop: marginal winning probabilities (Zhang et al., ECCV 2016)
# ----------------------------------------------------------------------------------------------
@dataclass
class ExcitationState:
    """Shared by the rules of one excitation composite.

    ``top``: the last linear/convolution call of the latest forward pass (the classifier);
    ``contrastive``: c-MWP, the top layer passes down the target's signal minus that of its dual
    unit, whose input weights are the top layer's negated (below the top layer the rules are linear
    in the signal, so one backward pass gives the difference of the two MWP maps).
    """

    top: Call | None = None
    contrastive: bool = False


_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TAG = "_faithmap_excitation_call"
_NONNEG = "_faithmap_non_negative"


class NonNegativeTag(Rule):
    """Marks a rectifier's output as non-negative (the gradient stays its rule), so that the layer it
    feeds skips the test for negative inputs."""

    wraps = False

    def forward(self, call, x, y):  # noqa: D102
        setattr(y, _NONNEG, True)


def _out_channels(module: nn.Module) -> int | None:
    return getattr(module, "out_channels", getattr(module, "out_features", None))


class ExcitationRule(Rule):
    """Excitation backprop at a linear or convolution layer ``z_j = sum_i w_ij a_i``:
    ``P(a_i) = sum_j a_i w+_ij / (sum_k a_k w+_kj) P(a_j)`` (Zhang et al. 2016, eq. 4 and 6), so
    ``grad_x = x * W+^T (g / (W+ x))`` in vector-Jacobian form; the bias takes no share.

    Signed inputs (the normalised image at the first layer, linear bottlenecks, pre-activation
    addends) are where the paper, which assumes non-negative activations, is silent: we keep its idea
    that only excitatory connections (``a_i w_ij > 0``) pass the signal, i.e. ``W+`` on ``x+`` and
    ``W-`` on ``x-`` share one normaliser ``W+ x+ + W- x-`` (the LRP z+ rule; zennit's ``ZPlus`` with
    zeroed bias). On non-negative inputs this is the paper's rule exactly. A batch norm right after
    the layer is folded into it: its per-channel scale ``gamma / sqrt(var + eps)`` multiplies the
    layer's weights, and since the rule is invariant to positive scales, only its sign matters
    (channels with ``gamma < 0`` take their excitatory weights from ``-W``). The top layer of the
    forward pass (the classifier) subtracts the signal of its dual unit (weights ``-W``) for c-MWP.
    """

    def __init__(self, state: ExcitationState, eps: float = 1e-6):
        self.state, self.eps = state, float(eps)

    def forward(self, call, x, y):  # noqa: D102
        setattr(y, _TAG, call)  # a batch norm fed by y folds into this call
        self.state.top = call

    def _local(self, call: Call, x: torch.Tensor, dual: bool):
        w = call.module.weight
        sign = call.state.get("sign")
        if sign is not None:
            w = w * sign.reshape(-1, *([1] * (w.dim() - 1)))
        if dual:
            w = -w
        signed = not getattr(x, _NONNEG, False) and bool(x.amin() < 0)  # rectifier outputs are >= 0
        xp = x.clamp(min=0) if signed else x
        parts = [(xp, *local_forward(call.module, xp, weight=w.clamp(min=0), bias=None))]
        if signed:
            xn = x.clamp(max=0)
            parts.append((xn, *local_forward(call.module, xn, weight=w.clamp(max=0), bias=None)))
        z = parts[0][2].detach()
        if len(parts) > 1:
            z = z + parts[1][2].detach()
        # z >= 0 (every term is excitatory), so the stabiliser is + eps (zennit's, for z >= 0); in place:
        # the local graph does not keep its output (a linear or convolution layer saves its inputs)
        return parts, z.add_(self.eps) if self.eps else stabilize(z, 0.0)

    @staticmethod
    def _pass(local, grad: torch.Tensor) -> torch.Tensor:
        parts, den = local
        s = grad / den
        out = None
        for xi, leaf, z in parts:
            (c,) = torch.autograd.grad(z, leaf, s)
            out = c.mul_(xi) if out is None else out.addcmul_(xi, c)
        return out

    def backward(self, call, x, grad):  # noqa: D102
        out = self._pass(self._local(call, x, False), grad)
        if self.state.contrastive and call is self.state.top:
            out = out - self._pass(self._local(call, x, True), grad)
        return out


class FoldedBatchNormRule(Rule):
    """Batch norm: folded into the linear/convolution layer whose output it normalises (that layer's
    rule takes the sign of the scale; see :class:`ExcitationRule`), and passing the signal unchanged
    itself. A batch norm fed by anything else (a sum, an activation) passes the signal unchanged."""

    def forward(self, call, x, y):  # noqa: D102
        src = getattr(x, _TAG, None)
        bn = call.module
        if src is not None and _out_channels(src.module) == getattr(bn, "num_features", None) and bn.weight is not None:
            src.state["sign"] = torch.sign(bn.weight.detach())

    def backward(self, call, x, grad):  # noqa: D102
        return grad


class _Sum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, eps):  # noqa: D102
        ctx.save_for_backward(a, b)
        ctx.eps = eps
        return a + b

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        a, b = ctx.saved_tensors
        s = grad / stabilize(a + b, ctx.eps)
        return a * s, b * s, None


class _SumInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, eps):  # noqa: D102
        ctx.a = a.clone()
        ctx.save_for_backward(b)
        ctx.eps = eps
        a.add_(b)
        ctx.mark_dirty(a)
        return a

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (b,) = ctx.saved_tensors
        a = ctx.a
        s = grad / stabilize(a + b, ctx.eps)
        return a * s, b * s, None


class SumRule(OpRule):
    """A sum ``y = a + b`` of two activations (a residual connection written ``+``, ``+=``,
    ``torch.add``): the signal splits in proportion to the addends, ``g_a = a / (a + b) * g``
    (conserving; zennit's ``Norm`` rule on its ``Sum`` module, TorchRay's ``EltwiseSum``). Sums with
    a constant, with ``alpha`` or broadcasting pass the gradient, as do sums whose addend does not
    require grad (it comes from below the read-out layer)."""

    def __init__(self, eps: float = 1e-6):
        self.eps = float(eps)

    def __call__(self, func, args, kwargs):  # noqa: D102
        if kwargs or len(args) != 2:
            return NotImplemented
        a, b = args
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.is_floating_point() and a.requires_grad and b.requires_grad):
            return NotImplemented
        fn = _SumInplace if func is torch.Tensor.add_ else _Sum
        return fn.apply(a, b, self.eps)


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, func, rest, kwargs, eps):  # noqa: D102
        ctx.save_for_backward(x)
        ctx.func, ctx.rest, ctx.kwargs, ctx.eps = func, rest, kwargs, eps
        return func(x, *rest, **kwargs)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (x,) = ctx.saved_tensors
        leaf = x.detach().requires_grad_(True)
        with paused_ops(), torch.enable_grad():
            z = ctx.func(leaf, *ctx.rest, **ctx.kwargs)
            (c,) = torch.autograd.grad(z, leaf, grad / stabilize(z.detach(), ctx.eps))
        return x * c, None, None, None, None


class NormRule(OpRule):
    """Average pooling (``F.avg_pool*``, ``F.adaptive_avg_pool*``, which their modules call) and means:
    a linear map with positive weights, so excitation backprop's linear rule applies as is:
    ``grad_x = x * J^T (g / f(x))`` (zennit's ``Norm``, TorchRay's pooling rule)."""

    def __init__(self, eps: float = 1e-6):
        self.eps = float(eps)

    def __call__(self, func, args, kwargs):  # noqa: D102
        x = args[0] if args else None
        if not (isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point()):
            return NotImplemented
        return _Norm.apply(x, func, tuple(args[1:]), dict(kwargs), self.eps)


def excitation_composite(state: ExcitationState | None = None, eps: float = 1e-6) -> Composite:
    """Excitation backprop's rules: :class:`ExcitationRule` at ``nn.Linear`` and ``nn.Conv1d/2d/3d``
    (subclasses included), :class:`FoldedBatchNormRule` at batch norms, :class:`SumRule` at sums of
    two activations and :class:`NormRule` at average pooling and means; everything else (ReLU,
    ReLU6, max pooling, dropout, reshapes) passes the gradient, which for ReLU and max pooling is
    the paper's winner-take-all rule."""
    import torch.nn.functional as F

    state = state if state is not None else ExcitationState()
    pool = NormRule(eps)
    add = SumRule(eps)
    ops: dict[Callable, OpRule] = {torch.add: add, torch.Tensor.add: add, torch.Tensor.add_: add,
                                   torch.mean: pool, torch.Tensor.mean: pool}
    for fn in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
               F.adaptive_avg_pool3d):
        ops[fn] = pool
    return Composite([(_LINEAR, ExcitationRule(state, eps)),
                      (nn.modules.batchnorm._BatchNorm, FoldedBatchNormRule()),
                      (_is_rectifier, NonNegativeTag())], ops)


__all__ = ["Call", "Composite", "ExcitationRule", "ExcitationState", "FoldedBatchNormRule", "NonNegativeTag", "NormRule", "OpRule",
           "RectifierRule", "Rule", "SumRule", "apply_rules", "excitation_composite", "local_forward", "paused_ops",
           "rectifier_cap", "rectifier_composite", "stabilize", "swapped_parameters"]
