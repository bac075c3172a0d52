"""One small op per registered curvature rule, for tests/test_rules.py.

``CASES`` maps a grad_fn name to a :class:`Case` (or a list of them): a
function and the float64 inputs it takes. The function's output must have
that grad_fn, and every input that requires grad must feed the op directly
(the rule is tested on that op alone). Adding a rule's case is one line:

    "TanhBackward0": case(torch.tanh, (3, 4)),

where ``(3, 4)`` is the shape of a random float64 input (``positive(3, 4)`` for
one above zero; a tensor is used as given). Inputs that should not be
differentiated (labels, constants) are closed over in the function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules._functions import BackwardHookFunction

_GENERATOR = torch.Generator().manual_seed(0)


def _random(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_GENERATOR, dtype=torch.float64)


def positive(*shape: int) -> torch.Tensor:
    """A random float64 input in [0.5, 2]."""
    return 0.5 + 1.5 * torch.rand(*shape, generator=_GENERATOR, dtype=torch.float64)


@dataclass
class Case:
    """``op(*inputs)`` builds the node; each input requires grad."""

    op: Callable[..., torch.Tensor]
    inputs: tuple[torch.Tensor, ...]
    # the same function, twice differentiable where ``op``'s node is not (fused
    # SDPA), or the float64 math of an op torch runs in float32 only (oneDNN)
    reference: Callable[..., torch.Tensor] | None = None
    float32_node: bool = False  # build the node from float32 copies of the inputs

    def build(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        dtype = torch.float32 if self.float32_node else torch.float64
        inputs = [
            t.detach().clone().to(dtype).requires_grad_(True) for t in self.inputs
        ]
        return self.op(*inputs), inputs

    def math(self) -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]:
        """The function and the float64 inputs the references differentiate."""
        op = self.reference or self.op
        if not self.float32_node:
            return op, self.inputs
        return op, tuple(t.float().double() for t in self.inputs)


def case(op: Callable[..., torch.Tensor], *inputs) -> Case:
    """A case from shapes (random float64 inputs) or tensors."""
    return Case(
        op, tuple(t if isinstance(t, torch.Tensor) else _random(*t) for t in inputs)
    )


LABELS = torch.tensor([0, 2, 1])
TARGET = _random(3, 4)


MASK = _random(3, 4) > 0
EMBED_IDS = torch.tensor([[2, 0, 0, 3], [3, 2, 1, 1]])
# from their own generator, so the inputs drawn after them stay as they were
_BCE = torch.Generator().manual_seed(1)
BCE_WEIGHT = 0.5 + torch.rand(4, generator=_BCE, dtype=torch.float64)
POS_WEIGHT = 0.5 + torch.rand(3, 4, generator=_BCE, dtype=torch.float64)


def _attention(**options):
    """SDPA's fused CPU kernel; ``reference`` recomputes it twice-differentiably."""

    def op(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, **options)

    def reference(q, k, v):
        with sdpa_kernel(SDPBackend.MATH):
            return op(q, k, v)

    return Case(
        op, (_random(2, 2, 3, 4), _random(2, 2, 4, 4), _random(2, 2, 4, 4)), reference
    )


def _batch_norm(training: bool):
    mean, var = _random(3).abs(), positive(3)
    return case(
        lambda x, w, b: F.batch_norm(x, mean, var, w, b, training=training),
        (4, 3, 2, 2),
        (3,),
        (3,),
    )


def _lstm_layer(reverse: bool, batch_first: bool = False) -> Case:
    """oneDNN's fused LSTM layer (float32 only); torch's unfused float64 LSTM
    (the backward direction: on the time-reversed sequence) is the reference.

    The kernel is time-major whatever ``batch_first`` says (nn.LSTM transposes
    a batch-first input first and passes the flag on)."""
    steps, batch, width, hidden = 3, 2, 3, 2

    def fused(x, w_ih, w_hh, b_ih, b_hh, h, c):
        weights = (w_ih, w_hh, b_ih, b_hh, h, c)
        flags = (reverse, [], 2, hidden, 1, True, False, batch_first, True)
        return torch.mkldnn_rnn_layer(x, *weights, *flags)[0]

    def unfused(x, w_ih, w_hh, b_ih, b_hh, h, c):
        x = x.flip(0) if reverse else x
        weights = [w_ih, w_hh, b_ih, b_hh]
        out = torch.lstm(
            x, (h[None], c[None]), weights, True, 1, 0.0, True, False, False
        )
        return out[0].flip(0) if reverse else out[0]

    shapes = [
        (steps, batch, width),
        (4 * hidden, width),
        (4 * hidden, hidden),
        (4 * hidden,),
        (4 * hidden,),
        (batch, hidden),
        (batch, hidden),
    ]
    return Case(fused, case(fused, *shapes).inputs, unfused, float32_node=True)


def _weight_norm(dim: int, shape: tuple[int, ...]) -> Case:
    """The fused ``_weight_norm`` node; the reference is the same map written out,
    since torch's double backward of the fused node is wrong (its Hessian is
    not even symmetric: torch 2.13, CPU)."""
    others = tuple(d for d in range(len(shape)) if d != dim)
    g_shape = tuple(s if d == dim else 1 for d, s in enumerate(shape))

    def reference(v, g):
        return g * v / torch.linalg.vector_norm(v, dim=others, keepdim=True)

    inputs = (_random(*shape), _random(*g_shape))
    return Case(lambda v, g: torch._weight_norm(v, g, dim), inputs, reference)


def _bloom_gelu() -> Case:
    """transformers' BLOOM GeLU, a custom autograd.Function (twice differentiable)."""
    from transformers.models.bloom.modeling_bloom import GeLUFunction

    return case(GeLUFunction.apply, (3, 4))


CASES: dict[str, Case | list[Case]] = {
    # shape
    "ViewBackward0": case(lambda x: x.view(4, 3), (2, 6)),
    "ReshapeAliasBackward0": case(
        lambda x: torch.ops.aten._reshape_alias(x, (4, 3), (3, 1)), (2, 6)
    ),
    "UnsafeViewBackward0": case(
        lambda x: torch.ops.aten._unsafe_view(x, (3, 4)), (2, 6)
    ),
    "SqueezeBackward0": case(lambda x: x.squeeze(), (3, 1, 4)),
    "SqueezeBackward1": case(lambda x: x.squeeze(1), (3, 1, 4)),
    "UnsqueezeBackward0": case(lambda x: x.unsqueeze(1), (3, 4)),
    "TBackward0": case(lambda x: x.t(), (3, 4)),
    "PermuteBackward0": [
        case(lambda x: x.permute(2, 0, 1), (3, 4, 2)),
        case(lambda x: x.permute(0, 2, 1), (3, 4, 2)),
        case(lambda x: x.permute(1, 0), (3, 4)),
    ],
    "ExpandBackward0": [
        case(lambda x: x.expand(3, 4), (1, 4)),
        case(lambda x: x.expand(2, 3, 4), (3, 4)),
    ],
    "CloneBackward0": case(torch.clone, (3, 4)),
    "AliasBackward0": case(torch.ops.aten.alias, (3, 4)),
    "BackwardHookFunctionBackward": case(
        lambda x: BackwardHookFunction.apply(x)[0], (3, 4)
    ),
    "SumBackward0": case(torch.sum, (3, 4)),
    "MeanBackward0": case(torch.mean, (3, 4)),
    "SumBackward1": [
        case(lambda x: x.sum(1), (3, 4, 2)),
        case(lambda x: x.sum(0, keepdim=True), (3, 4)),
    ],
    "MeanBackward1": [
        case(lambda x: x.mean((1, 2)), (3, 4, 2)),
        case(lambda x: x.mean(0), (3, 4)),
    ],
    "MaxBackward0": case(lambda x: x.max(1)[0], (3, 4)),
    "CumsumBackward0": [
        case(lambda x: x.cumsum(1), (3, 4, 2)),
        case(lambda x: x.cumsum(-1), (3, 4)),
        case(lambda x: x.cumsum(0), (3, 4)),
    ],
    "MinBackward0": case(lambda x: x.min(0, keepdim=True)[0], (3, 4)),
    # linear algebra
    "MmBackward0": case(torch.mm, (3, 4), (4, 2)),
    "AddmmBackward0": [
        case(torch.addmm, (2,), (3, 4), (4, 2)),
        case(
            lambda b, x, w: torch.addmm(b, x, w, beta=0.5, alpha=2.0),
            (3, 2),
            (3, 4),
            (4, 2),
        ),
    ],
    "MvBackward0": case(torch.mv, (3, 4), (4,)),
    "DotBackward0": case(torch.dot, (4,), (4,)),
    "VdotBackward0": case(torch.vdot, (4,), (4,)),
    # elementwise
    "AddBackward0": case(lambda a, b: torch.add(a, b, alpha=2.0), (3, 4), (4,)),
    "SubBackward0": case(lambda a, b: torch.sub(a, b, alpha=0.5), (3, 1), (3, 4)),
    "AddBackward1": case(lambda x: torch.ops.aten.add.Scalar(x, 2.0, alpha=3), (3, 4)),
    "SubBackward1": case(lambda x: torch.ops.aten.sub.Scalar(x, 2.0), (3, 4)),
    "NegBackward0": case(torch.neg, (3, 4)),
    "RsubBackward1": case(lambda x: 1.0 - x, (3, 4)),
    "MulBackward1": case(lambda x: torch.ops.aten.mul.Scalar(x, 3.0), (3, 4)),
    "DivBackward1": case(lambda x: torch.ops.aten.div.Scalar(x, 3.0), (3, 4)),
    "MulBackward0": [
        case(torch.mul, (3, 4), (3, 4)),
        case(torch.mul, (3, 4), (4,)),
    ],
    "DivBackward0": [
        case(torch.div, (3, 4), positive(3, 4)),
        case(torch.div, (3, 4), positive(3, 1)),
        # a Python number: saved as a "wrapped number" tensor (attention's scale)
        case(lambda x: x / 2.0**0.5, (3, 4)),
    ],
    "TanhBackward0": case(torch.tanh, (3, 4)),
    "SigmoidBackward0": case(torch.sigmoid, (3, 4)),
    "ReluBackward0": case(torch.relu, (3, 4)),
    "ExpBackward0": case(torch.exp, (3, 4)),
    "ReciprocalBackward0": case(torch.reciprocal, positive(3, 4)),
    "GeluBackward0": [
        case(F.gelu, (3, 4)),
        case(lambda x: F.gelu(x, approximate="tanh"), (3, 4)),
    ],
    "SiluBackward0": case(F.silu, (3, 4)),
    "SoftplusBackward0": case(lambda x: F.softplus(x, beta=2.0), (3, 4)),
    "LeakyReluBackward0": case(lambda x: F.leaky_relu(x, 0.1), (3, 4)),
    "LogBackward0": case(torch.log, positive(3, 4)),
    "SinBackward0": case(torch.sin, (3, 4)),
    "CosBackward0": case(torch.cos, (3, 4)),
    "PowBackward0": case(lambda x: x**3, (3, 4)),
    "LinalgVectorNormBackward0": [
        case(lambda x: torch.linalg.vector_norm(x, dim=1), (3, 4, 2)),
        case(lambda x: x.norm(dim=-1, keepdim=True), (3, 4)),
        case(lambda x: x.norm(dim=0), (3, 4)),
    ],
    "GluBackward0": [
        case(F.glu, (3, 4)),
        case(lambda x: F.glu(x, 1), (2, 6, 3)),
        case(lambda x: F.glu(x, 0), (4, 3)),
    ],
    "SoftmaxBackward0": [
        case(lambda x: F.softmax(x, 1), (3, 4)),
        case(lambda x: F.softmax(x, 0), (3, 4, 2)),
    ],
    # losses
    "MseLossBackward0": [
        case(F.mse_loss, (3, 4), (3, 4)),
        case(lambda x: F.mse_loss(x, TARGET, reduction="sum"), (3, 4)),
        case(lambda x: F.mse_loss(x, TARGET, reduction="none"), (3, 4)),
    ],
    "HuberLossBackward0": case(lambda x: F.huber_loss(x, TARGET, delta=0.5), (3, 4)),
    "SmoothL1LossBackward0": case(
        lambda x: F.smooth_l1_loss(x, TARGET, beta=0.5, reduction="sum"), (3, 4)
    ),
    "NllLossBackward0": case(lambda x: F.nll_loss(x, LABELS), (3, 4)),
    "BinaryCrossEntropyWithLogitsBackward0": [
        case(lambda x: F.binary_cross_entropy_with_logits(x, TARGET.sigmoid()), (3, 4)),
        case(
            lambda x: F.binary_cross_entropy_with_logits(
                x,
                (TARGET > 0).double(),
                weight=BCE_WEIGHT,
                pos_weight=POS_WEIGHT,
                reduction="sum",
            ),
            (3, 4),
        ),
        case(
            lambda x: F.binary_cross_entropy_with_logits(
                x, TARGET.sigmoid(), reduction="none"
            ),
            (3, 4),
        ),
    ],
    "BinaryCrossEntropyBackward0": [
        case(lambda p: F.binary_cross_entropy(p, TARGET.sigmoid()), positive(3, 4) / 3),
        case(
            lambda p: F.binary_cross_entropy(
                p, (TARGET > 0).double(), weight=BCE_WEIGHT, reduction="sum"
            ),
            positive(3, 4) / 3,
        ),
    ],
    "LogSoftmaxBackward0": [
        case(lambda x: F.log_softmax(x, 1), (3, 4)),
        case(lambda x: F.log_softmax(x, 0), (3, 4)),
    ],
    # spatial
    "ConvolutionBackward0": [
        case(
            lambda x, w, b: F.conv2d(x, w, b, padding=1),
            (2, 2, 4, 4),
            (3, 2, 3, 3),
            (3,),
        ),
        case(lambda x, w: F.conv1d(x, w, stride=2, groups=2), (2, 4, 7), (2, 2, 3)),
        case(
            lambda x, w, b: F.conv_transpose1d(
                x, w, b, stride=2, padding=1, output_padding=1
            ),
            (2, 3, 4),
            (3, 2, 3),
            (2,),
        ),
        case(
            lambda x, w: F.conv_transpose2d(x, w, stride=2, groups=2, dilation=2),
            (2, 4, 3, 3),
            (4, 1, 2, 2),
        ),
    ],
    "MaxPool2DWithIndicesBackward0": case(lambda x: F.max_pool2d(x, 2), (2, 2, 4, 4)),
    "MaxPool3DWithIndicesBackward0": case(
        lambda x: F.max_pool3d(x, 2, stride=1), (2, 1, 3, 3, 3)
    ),
    "AvgPool2DBackward0": case(lambda x: F.avg_pool2d(x, 2, padding=1), (2, 2, 4, 4)),
    "AvgPool3DBackward0": case(lambda x: F.avg_pool3d(x, 2), (2, 1, 4, 4, 4)),
    "AdaptiveAvgPool2DBackward0": case(
        lambda x: F.adaptive_avg_pool2d(x, 3), (2, 2, 5, 5)
    ),
    "AdaptiveAvgPool3DBackward0": case(
        lambda x: F.adaptive_avg_pool3d(x, 2), (2, 1, 3, 3, 3)
    ),
    "ConstantPadNdBackward0": case(lambda x: F.pad(x, (1, 2, 0, 1)), (2, 3, 4)),
    "UpsampleBilinear2DBackward0": [
        case(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), (2, 2, 3, 3)),
        case(
            lambda x: F.interpolate(x, (4, 5), mode="bilinear", align_corners=True),
            (2, 1, 3, 2),
        ),
    ],
    "UpsampleNearest2DBackward0": case(
        lambda x: F.interpolate(x, scale_factor=(2, 3)), (2, 2, 2, 3)
    ),
    # normalization
    "NativeLayerNormBackward0": case(
        lambda x, w, b: F.layer_norm(x, (4,), w, b), (3, 2, 4), (4,), (4,)
    ),
    "NativeGroupNormBackward0": case(
        lambda x, w, b: F.group_norm(x, 2, w, b), (2, 4, 3), (4,), (4,)
    ),
    "NativeBatchNormBackward0": [_batch_norm(True), _batch_norm(False)],
    # indexing
    "CatBackward0": [
        case(lambda a, b: torch.cat([a, b], 1), (3, 2), (3, 4)),
        case(lambda a, b: torch.cat([a, b]), (1, 4), (3, 4)),
    ],
    "StackBackward0": case(lambda a, b: torch.stack([a, b], 2), (3, 4), (3, 4)),
    "SelectBackward0": case(lambda x: x.select(1, 2), (3, 4, 2)),
    "SliceBackward0": case(lambda x: x[:, 1:4:2], (3, 5)),
    "GatherBackward0": case(
        lambda x: x.gather(1, torch.tensor([[0, 0], [2, 1]])), (2, 3)
    ),
    "IndexBackward0": [
        case(lambda x: x[:, torch.tensor([0, 2, 0])], (3, 4)),
        case(lambda x: x[torch.tensor([1, 1, 0])], (3, 4)),
    ],
    "TransposeBackward0": case(lambda x: x.transpose(1, 2), (2, 3, 4)),
    "TransposeBackward1": case(lambda x: x.clone().transpose_(0, 2), (2, 3, 4)),
    "FlipBackward0": case(lambda x: x.flip(1), (3, 4)),
    "TrilBackward0": case(lambda x: x.tril(), (2, 3, 3)),
    "TriuBackward0": case(lambda x: x.triu(1), (3, 3)),
    "RepeatBackward0": case(lambda x: x.repeat(2, 1), (3, 4)),
    "EmbeddingBackward0": [
        case(lambda w: F.embedding(torch.tensor([[1, 0, 1], [3, 3, 0]]), w), (4, 3)),
        case(lambda w: F.embedding(torch.tensor([1, 0, 1]), w, padding_idx=1), (2, 3)),
        # a padding row in a batch, rows repeated within and across samples
        case(lambda w: F.embedding(EMBED_IDS, w, padding_idx=2), (4, 3)),
        # two ids per token, as int32
        case(lambda w: F.embedding(EMBED_IDS.view(2, 2, 2).int(), w), (4, 3)),
    ],
    "EmbeddingBagBackward0": [
        case(
            lambda w: F.embedding_bag(torch.tensor([[1, 0, 1], [3, 3, 0]]), w), (4, 3)
        ),
        case(
            lambda w: F.embedding_bag(
                torch.tensor([2, 0, 1, 3]), w, torch.tensor([0, 1]), mode="sum"
            ),
            (4, 3),
        ),
        case(
            lambda w: F.embedding_bag(torch.tensor([[1, 0], [2, 2]]), w, mode="max"),
            (3, 3),
        ),
    ],
    "WhereBackward0": case(lambda a, b: torch.where(MASK, a, b), (3, 4), (1, 4)),
    "MaskedFillBackward0": case(lambda x: x.masked_fill(MASK, 2.0), (3, 4)),
    "NativeDropoutBackward0": case(
        lambda x: torch.native_dropout(x, 0.5, True)[0], (3, 4)
    ),
    "SplitBackward0": case(lambda x: x.split(2, 1)[1], (3, 5)),
    "SplitWithSizesBackward0": case(lambda x: x.split([1, 3], 0)[1], (4, 3)),
    "UnsafeSplitBackward0": case(lambda x: x.unsafe_split(2, 1)[0], (3, 4)),
    "UnsafeSplitWithSizesBackward0": case(
        lambda x: torch.ops.aten.unsafe_split_with_sizes(x, [2, 1], 1)[1], (3, 3)
    ),
    "UnbindBackward0": [
        case(lambda x: x.unbind(1)[2], (2, 3, 4)),
        case(lambda x: x.unbind(0)[1], (3, 4)),
    ],
    # attention
    "BmmBackward0": [
        case(torch.bmm, (2, 3, 4), (2, 4, 5)),
        case(torch.bmm, (2, 5, 4), (2, 4, 3)),
    ],
    "SafeSoftmaxBackward0": case(
        lambda x: torch.ops.aten._safe_softmax(x, -1), (2, 3, 4)
    ),
    "BaddbmmBackward0": case(
        lambda c, a, b: torch.baddbmm(c, a, b, beta=0.5, alpha=2.0),
        (1, 3, 2),
        (2, 3, 4),
        (2, 4, 2),
    ),
    "ScaledDotProductFlashAttentionForCpuBackward0": [
        _attention(),
        _attention(is_causal=True, scale=0.7),
        _attention(attn_mask=_random(3, 4)),
    ],
    # activations
    "RsqrtBackward0": case(torch.rsqrt, positive(3, 4)),
    "SqrtBackward0": case(torch.sqrt, positive(3, 4)),
    "PowBackward2": case(lambda x: 1.5**x, (3, 4)),
    "HardswishBackward0": case(F.hardswish, 4 * _random(3, 4)),
    "HardtanhBackward0": [
        case(F.hardtanh, 2 * _random(3, 4)),
        case(F.relu6, 4 * _random(3, 4)),
    ],
    "HardsigmoidBackward0": Case(  # torch has no double backward for it
        F.hardsigmoid, (4 * _random(3, 4),), lambda x: F.relu6(x + 3) / 6
    ),
    "ClampBackward1": case(lambda x: x.clamp(-0.5, 1.0), (3, 4)),
    "AbsBackward0": case(torch.abs, (3, 4)),
    "ToCopyBackward0": case(lambda x: torch.ops.aten._to_copy(x), (3, 4)),
    "EluBackward0": [
        case(lambda x: F.elu(x, 0.7), (3, 4)),
        case(F.selu, (3, 4)),
    ],
    "CeluBackward0": case(lambda x: F.celu(x, 0.5), (3, 4)),
    "MishBackward0": case(F.mish, (3, 4)),
    "LogSigmoidBackward0": case(F.logsigmoid, (3, 4)),
    "ErfBackward0": case(torch.erf, (3, 4)),
    "Log1PBackward0": case(torch.log1p, positive(3, 4)),
    "Expm1Backward0": case(torch.expm1, (3, 4)),
    "HardshrinkBackward0": case(lambda x: F.hardshrink(x, 0.3), (3, 4)),
    "SoftshrinkBackward0": case(lambda x: F.softshrink(x, 0.3), (3, 4)),
    "ThresholdBackward0": case(lambda x: F.threshold(x, 0.1, -1.0), (3, 4)),
    "ClampMinBackward0": case(lambda x: x.clamp_min(0.2), (3, 4)),
    "ClampMaxBackward0": case(lambda x: x.clamp_max(-0.2), (3, 4)),
    "PreluKernelBackward0": [  # F.prelu views a per-channel weight as (C, 1, ...)
        case(torch.ops.aten._prelu_kernel, (2, 3, 4), (3, 1)),
        case(torch.ops.aten._prelu_kernel, (3, 4), (1,)),
    ],
    "GeLUFunctionBackward": _bloom_gelu(),
    # reparametrization
    "WeightNormInterfaceBackward0": [
        _weight_norm(0, (3, 4)),
        _weight_norm(2, (2, 3, 4)),
    ],
    # recurrent
    "MkldnnRnnLayerBackward0": [
        _lstm_layer(False),
        _lstm_layer(True),
        _lstm_layer(False, batch_first=True),
    ],
}

# Rules whose node only a CUDA device builds: the same rule object as the
# CPU flash kernel's (its case above), reading the same saved query, key,
# value, mask / bias, causal flag and scale.
CUDA_ONLY = {
    "ScaledDotProductFlashAttentionBackward0",
    "ScaledDotProductEfficientAttentionBackward0",
    "ScaledDotProductCudnnAttentionBackward0",
}


def cases_for(name: str) -> list[Case]:
    """The cases of grad_fn ``name`` as a list."""
    found = CASES[name]
    return found if isinstance(found, list) else [found]
