"""The V-V dual-path encoder against an independent float64 re-computation of
METHOD.md §2.1 written here from the equations (not from the code under test)."""

from __future__ import annotations

import math

import pytest
import torch

from anoclip.clip.encoder import VVEncoder


def layer_norm64(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight.double() + ln.bias.double()


def gelu64(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def attention64(a, b, v, heads):
    """heads(softmax(a bᵀ/√d_h) v) for `[N, D]` inputs."""
    n, d = a.shape
    dh = d // heads
    out = []
    for h in range(heads):
        sl = slice(h * dh, (h + 1) * dh)
        s = a[:, sl] @ b[:, sl].T / math.sqrt(dh)
        w = torch.exp(s - s.max(-1, keepdim=True).values)
        out.append((w / w.sum(-1, keepdim=True)) @ v[:, sl])
    return torch.cat(out, dim=-1)


def reference64(visual, image, start=1):
    """Returns (cls [C], {layer: vv tokens [L, C]}, {layer: ori tokens [L, C]}) in float64."""
    x = image.double()
    w = visual.conv1.weight.double()
    patches = torch.nn.functional.conv2d(x[None], w, stride=visual.conv1.stride)[0]
    tokens = patches.flatten(1).T  # [L, D]
    h = (
        torch.cat([visual.class_embedding.double()[None], tokens])
        + visual.positional_embedding.double()
    )
    h = layer_norm64(h, visual.ln_pre)
    z = None
    vv, ori = {}, {}
    d = h.shape[1]
    for l, blk in enumerate(visual.transformer.resblocks, start=1):
        a = blk.attn
        u = layer_norm64(h, blk.ln_1)
        qkv = u @ a.in_proj_weight.double().T + a.in_proj_bias.double()
        q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
        wo, bo = a.out_proj.weight.double(), a.out_proj.bias.double()
        o_ori = attention64(q, k, v, a.num_heads) @ wo.T + bo
        o_vv = attention64(v, v, v, a.num_heads) @ wo.T + bo
        if l >= start:
            z = (h if z is None else z) + o_vv
            vv[l] = z[1:]
        hp = h + o_ori
        m = blk.mlp
        mlp = gelu64(layer_norm64(hp, blk.ln_2) @ m.c_fc.weight.double().T + m.c_fc.bias.double())
        h = hp + mlp @ m.c_proj.weight.double().T + m.c_proj.bias.double()
        ori[l] = h[1:]
    proj = visual.proj.double()

    def post(t):
        return layer_norm64(t, visual.ln_post) @ proj

    return post(h[0]), {l: post(t) for l, t in vv.items()}, {l: post(t) for l, t in ori.items()}


def rel(a, b):
    return float((a.double() - b).norm() / b.norm())


@pytest.fixture(scope="module")
def image():
    return torch.randn(3, 240, 240, generator=torch.Generator().manual_seed(3))


def test_vv_path_matches_float64_equations(tiny_backbone, image):
    visual = tiny_backbone.model.visual
    cls64, vv64, ori64 = reference64(visual, image)
    with torch.inference_mode():
        out = VVEncoder(visual)(image[None], layers=(3, 6, 9, 12), ori_layers=(3, 6, 9, 12))
    assert rel(out.cls[0], cls64) < 1e-5
    for layer in (3, 6, 9, 12):
        assert rel(out.vv[layer][0], vv64[layer]) < 1e-5
        assert rel(out.ori[layer][0], ori64[layer]) < 1e-5


def test_layers_are_real_snapshots_not_aliases(tiny_backbone, image):
    with torch.inference_mode():
        out = VVEncoder(tiny_backbone.model.visual)(image[None], layers=(3, 6, 9, 12))
    tokens = [out.vv[layer] for layer in (3, 6, 9, 12)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert rel(tokens[i], tokens[j].double()) > 1e-2
    # reference mode (default: final layer only) equals the multilayer run's layer 12
    with torch.inference_mode():
        final = VVEncoder(tiny_backbone.model.visual)(image[None])
    assert list(final.vv) == [12]
    assert torch.equal(final.vv[12], out.vv[12])


def test_cls_equals_open_clip_image_embedding(tiny_backbone, image):
    with torch.inference_mode():
        ours = VVEncoder(tiny_backbone.model.visual)(image[None]).cls
        theirs = tiny_backbone.model.encode_image(image[None])
    assert rel(ours, theirs.double()) < 1e-5


def test_vv_start_layer_branches_from_original_stream(tiny_backbone, image):
    visual = tiny_backbone.model.visual
    _, vv64, _ = reference64(visual, image, start=7)
    with torch.inference_mode():
        out = VVEncoder(visual, vv_start_layer=7)(image[None], layers=(7, 12))
    assert rel(out.vv[7][0], vv64[7]) < 1e-5
    assert rel(out.vv[12][0], vv64[12]) < 1e-5
    with pytest.raises(ValueError):
        VVEncoder(visual, vv_start_layer=7)(image[None], layers=(3,))


def test_real_size_config_vv_path(quiet):
    """ViT-B-16-plus-240 (random weights): D=896, 14 heads, 15×15 grid, C=640."""
    import open_clip

    model = open_clip.create_model("ViT-B-16-plus-240", pretrained=None).eval()
    img = torch.randn(3, 240, 240, generator=torch.Generator().manual_seed(0))
    cls64, vv64, _ = reference64(model.visual, img)
    with torch.inference_mode():
        out = VVEncoder(model.visual)(img[None])
    assert out.vv[12].shape == (1, 225, 640) and out.grid == (15, 15)
    assert rel(out.cls[0], cls64) < 1e-4
    assert rel(out.vv[12][0], vv64[12]) < 1e-4


def test_anovl_softmax_is_stable_for_large_logits():
    from anoclip.clip.encoder import anovl_softmax

    x = torch.tensor([[1000.0, 999.0, -5.0], [1.0, 2.0, 3.0]])
    got = anovl_softmax(x)
    want = torch.softmax(x.double(), dim=-1)
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), want, atol=1e-6)
