"""The plain tower's CLS for the 21 augmented views of the 22-view image score.

The views need only the CLS embedding of the unmodified (plain) visual tower, and they are
21 of every 22 images the tower sees, so this is where the CPU time of the default image
score goes. :func:`plain_forward` builds the function images `[B, 3, S, S]` -> CLS `[B, C]`
once per run, by `Runtime.view_engine` and `Runtime.precision`:

    "open_clip"  the tower's own forward (``visual(x)``)
    "fused"      :func:`plain_cls`: the same blocks, fused attention, and the last block
                 for the CLS query only (equal float32 outputs; the default)
    "openvino"   :class:`PlainCLS` converted once to an OpenVINO CPU model (extra ``export``)
    "onnxruntime" :class:`PlainCLS` exported once to ONNX, run by ONNX Runtime's CPU
                 provider (extra ``export``; the fastest float32 engine measured here:
                 MLAS GEMMs, bias + GELU fused)

    precision "int8" (CPU, "fused" only): QKV, output and MLP Linear layers as dynamic int8.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anoclip.clip import towers
from anoclip.errors import UsageError
from anoclip.extras import require
from anoclip.settings import Precision, ViewEngine

PlainForward = Callable[[torch.Tensor], torch.Tensor]  # images [B, 3, S, S] -> CLS [B, C]


def plain_forward(
    visual: nn.Module,
    precision: Precision = "fp32",
    device: torch.device | None = None,
    engine: ViewEngine = "fused",
) -> PlainForward:
    """The plain tower's CLS function for `engine` and `precision` (see the module doc).

    Builds what the engine needs (int8 weights, an OpenVINO model) here, once: call it
    once per run. "fused" falls back to the tower's own forward for blocks that are not
    open_clip's plain ``ResidualAttentionBlock`` (:func:`fusable`).
    """
    cpu_only = device is not None and device.type != "cpu"
    if engine in ("openvino", "onnxruntime"):
        if cpu_only:
            raise UsageError(f"view_engine={engine!r} runs on the CPU only")
        if engine == "onnxruntime":
            return _onnxruntime_forward(visual, precision)
        return _openvino_forward(visual, precision)
    if precision == "int8":
        if cpu_only:
            raise UsageError("precision='int8' runs on the CPU only; use fp16/bf16 on CUDA")
        if engine != "fused" or not fusable(visual):
            raise UsageError("precision='int8' needs view_engine='fused' on open_clip ViT blocks")
        blocks = _int8_blocks(visual)
        return lambda x: plain_cls(visual, x, blocks)
    if engine == "open_clip" or not fusable(visual):
        return visual
    blocks = [_float_block(b) for b in towers.blocks(visual)]
    return lambda x: plain_cls(visual, x, blocks)


@dataclass(frozen=True)
class PlainBlock:
    """One block of the plain tower as :func:`plain_cls` runs it: the block's own norms
    and layer scales, `qkv`: `[..., D]` -> `[..., 3D]`, `out`: `[..., D]` -> `[..., D]`,
    `mlp`: `[..., D]` -> `[..., D]` (float32 Linear layers, or int8 ones)."""

    ln_1: nn.Module
    ln_2: nn.Module
    ls_1: nn.Module
    ls_2: nn.Module
    qkv: Callable[[torch.Tensor], torch.Tensor]
    out: Callable[[torch.Tensor], torch.Tensor]
    mlp: Callable[[torch.Tensor], torch.Tensor]
    heads: int


class PlainCLS(nn.Module):
    """:func:`plain_cls` over a tower's own float32 blocks, as a module (for conversion)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [_float_block(b) for b in towers.blocks(self.visual)]
        return plain_cls(self.visual, x, blocks)


def _openvino_forward(visual: nn.Module, precision: Precision) -> PlainForward:
    """:class:`PlainCLS` converted from PyTorch to an OpenVINO CPU model (optional extra
    ``export``) with inference precision "f32" ("bf16" for precision "bf16") and torch's
    thread count; inputs and outputs float32 on the CPU."""
    if precision == "int8":
        raise UsageError("precision='int8' needs view_engine='fused'")
    if not fusable(visual):
        raise UsageError("view_engine='openvino' needs open_clip's plain ViT blocks")
    ov = require("openvino", "export", "view_engine='openvino'")
    hint = "bf16" if precision == "bf16" else "f32"  # OpenVINO's own CPU default may be bf16
    size = towers.image_size(visual)
    example = torch.zeros(2, 3, size, size)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(PlainCLS(visual).eval(), example_input=example)
    config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    compiled = ov.Core().compile_model(converted, "CPU", config)
    output = compiled.output(0)
    return lambda x: torch.from_numpy(compiled(x.detach().float().cpu().numpy())[output])


def _onnxruntime_forward(visual: nn.Module, precision: Precision) -> PlainForward:
    """:class:`PlainCLS` exported to ONNX (TorchScript exporter, opset 17, dynamic batch;
    a temporary file, loaded into memory) and run by ONNX Runtime's CPU provider with
    torch's thread count and all graph optimisations (optional extra ``export``); float32
    only. Inputs and outputs float32 on the CPU."""
    if precision != "fp32":
        raise UsageError("view_engine='onnxruntime' runs in float32 only (precision='fp32')")
    if not fusable(visual):
        raise UsageError("view_engine='onnxruntime' needs open_clip's plain ViT blocks")
    ort = require("onnxruntime", "export", "view_engine='onnxruntime'")
    require("onnx", "export", "view_engine='onnxruntime'")
    size = towers.image_size(visual)
    example = torch.zeros(2, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "views.onnx"
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                PlainCLS(visual).eval(), (example,), str(path), input_names=["images"],
                output_names=["cls"], dynamic_axes={"images": {0: "batch"}},
                opset_version=17, dynamo=False,
            )  # fmt: skip
        model = path.read_bytes()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(
        session.run(None, {"images": x.detach().float().cpu().numpy()})[0]
    )


def fusable(visual: nn.Module) -> bool:
    """Whether :func:`plain_cls` computes what ``visual(x)`` computes: every block is an
    open_clip ``ResidualAttentionBlock`` with a packed-QKV ``nn.MultiheadAttention``."""
    from open_clip.transformer import ResidualAttentionBlock

    return all(
        type(b) is ResidualAttentionBlock
        and isinstance(b.attn, nn.MultiheadAttention)
        and b.attn.in_proj_weight is not None
        and b.attn.in_proj_bias is not None
        and not hasattr(b, "ln_1_kv")
        for b in towers.blocks(visual)
    )


def plain_cls(visual: nn.Module, x: torch.Tensor, blocks: Sequence[PlainBlock]) -> torch.Tensor:
    """CLS embeddings `[B, C]` of images `[B, 3, S, S]`, open_clip's forward written out:

        h_0 = LN_pre(patch_embed(x) ⊕ cls + pos)                          `[B, 1+L, D]`
        h'_l = h_{l-1} + SDPA(Q, K, V)·W_o + b_o,  [Q K V] = LN1_l(h_{l-1})·W_qkv + b_qkv
        h_l = h'_l + MLP_l(LN2_l(h'_l))
        CLS = LN_post(h_n[0])·P

    Attention is torch's fused ``scaled_dot_product_attention``; the last block is run for
    the CLS query only (K and V of every token), the one row the result depends on.
    Equal to ``visual(x)`` up to float rounding.
    """
    h = towers.embed(visual, x)
    last = len(blocks) - 1
    for index, block in enumerate(blocks):
        b, n, d = h.shape
        qkv = block.qkv(block.ln_1(h)).view(b, n, 3, block.heads, d // block.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # [B, heads, N, d_h]
        if index == last:
            q, h = q[:, :, :1], h[:, :1]
        o = F.scaled_dot_product_attention(q, k, v)
        h = h + block.ls_1(block.out(o.transpose(1, 2).reshape(b, -1, d)))
        h = h + block.ls_2(block.mlp(block.ln_2(h)))
    return towers.project(visual, h[:, 0])


def _float_block(block: nn.Module) -> PlainBlock:
    p = towers.block_parts(block)
    return PlainBlock(
        p.ln_1, p.ln_2, p.ls_1, p.ls_2,
        lambda u: F.linear(u, p.qkv_weight, p.qkv_bias),
        lambda o: F.linear(o, p.out_weight, p.out_bias),
        p.mlp, p.heads,
    )  # fmt: skip


def _int8_blocks(visual: nn.Module) -> list[PlainBlock]:
    """The tower's blocks with int8 Linear layers (QKV, output, both MLP layers): weights
    quantised once per output channel (symmetric), activations per call (fbgemm dynamic
    quantisation); norms, GELU, attention and the residual stream stay float32."""
    blocks = []
    for block in towers.blocks(visual):
        p = towers.block_parts(block)
        fc, act, proj = block.mlp.c_fc, block.mlp.gelu, block.mlp.c_proj
        c_fc = int8_linear(fc.weight, fc.bias)
        c_proj = int8_linear(proj.weight, proj.bias)
        qkv = int8_linear(p.qkv_weight, p.qkv_bias)
        out = int8_linear(p.out_weight, p.out_bias)
        mlp = nn.Sequential(c_fc, act, c_proj)
        blocks.append(PlainBlock(p.ln_1, p.ln_2, p.ls_1, p.ls_2, qkv, out, mlp, p.heads))
    return blocks


def int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A dynamic int8 Linear y ≈ x·Wᵀ + b: W `[O, I]` quantised per output row with scale
    max|W_o|/127 (zero point 0), x quantised per call (torch.ao dynamic quantisation)."""
    from torch.ao.nn.quantized.dynamic import Linear

    w = weight.detach().float().cpu()
    scales = (w.abs().amax(dim=1).clamp_min(1e-12) / 127).double()
    zeros = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated in torch >= 2.12
        warnings.simplefilter("ignore")
        layer = Linear(w.shape[1], w.shape[0], dtype=torch.qint8)
        qweight = torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)
        b = None if bias is None else bias.detach().float().cpu()
        layer.set_weight_bias(qweight, b)
    return layer
