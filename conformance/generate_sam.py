"""Golden vectors for specs/sam.yaml: the image encoder (SAMViT) of Refiners
0.4.0's Segment Anything, built from Refiners' own classes at a small size.

    conformance/.venv/bin/python conformance/generate_sam.py [--full]

SAMViT's constructor hard-codes a 1024 px image, 16 px patches, 14 px
windows and a 256-channel neck; `sam_vit` below builds the same tree from
Refiners' PatchEncoder, PositionalEncoder, TransformerLayer, Transformer and
Neck classes with those sizes as parameters, and checks first that at ViT-H
size (on the meta device) it has exactly the keys and shapes of
SegmentAnythingH's image_encoder. It also writes that layout as a header
(testdata/headers/sam_vit_h_image_encoder.json) for the Go side's plan
check.

Tiny (committed, testdata/specs): a 128 px image, 8×8 patch grid, width 16,
3 layers (layer 1 global), 2 heads, 3×3 windows (so the grid is padded to
9×9), a 16-channel neck.
Full (--full, testdata/full): ViT-H at 1024 px, the spec's defaults;
--vit-b: ViT-B's sizes at 1024 px (lighter, same grid and windows).
"""

import json
import sys
import time
from pathlib import Path

import refiners.fluxion.layers as fl
import torch
from refiners.foundationals.segment_anything.image_encoder import (
    Neck,
    PatchEncoder,
    PositionalEncoder,
    SAMViT,
    Transformer,
    TransformerLayer,
)
from refiners.foundationals.segment_anything.model import SegmentAnythingH
from refiners.foundationals.segment_anything.mask_decoder import DenseEmbeddingUpscaling, MaskDecoder
from refiners.foundationals.segment_anything.prompt_encoder import MaskEncoder, PointEncoder, PointTypeEmbedding

from safetensors.torch import save_file

from golden import float64_twin, reference_error_note, reference_tensors, save_spec_case, tree_print, upcast


class SizedNeck(fl.Chain):
    """Refiners' Neck with its 256 output channels as a parameter (same
    layers, same keys); used only when neck_dim != 256."""

    def __init__(self, in_channels, neck_dim, device=None):
        super().__init__(
            fl.Permute(0, 3, 1, 2),
            fl.Conv2d(in_channels, neck_dim, kernel_size=1, use_bias=False, device=device),
            fl.LayerNorm2d(neck_dim, device=device),
            fl.Conv2d(neck_dim, neck_dim, kernel_size=3, padding=1, use_bias=False, device=device),
            fl.LayerNorm2d(neck_dim, device=device),
        )


SizedNeck.__name__ = "Neck"  # the class name is the key


def sam_vit(embedding_dim, num_layers, num_heads, global_attention_indices, image_size=1024, patch_size=16,
            window_size=14, neck_dim=256, device=None):
    """SAMViT as Refiners' SAMViT.__init__ builds it, with its hard-coded
    sizes as parameters. The root is a SAMViT instance (its class name is
    the root's type name)."""
    grid = (image_size // patch_size, image_size // patch_size)
    model = SAMViT.__new__(SAMViT)
    neck = (Neck(in_channels=embedding_dim, device=device) if neck_dim == 256
            else SizedNeck(embedding_dim, neck_dim, device=device))
    fl.Chain.__init__(
        model,
        PatchEncoder(in_channels=3, out_channels=embedding_dim, patch_size=patch_size, device=device),
        PositionalEncoder(embedding_dim=embedding_dim, image_embedding_size=grid, device=device),
        Transformer(
            TransformerLayer(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                feedforward_dim=4 * embedding_dim,
                window_size=None if i in global_attention_indices else window_size,
                image_embedding_size=grid,
                device=device,
            )
            for i in range(num_layers)
        ),
        neck,
    )
    return model


def layout(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_full_size_layout(here):
    """sam_vit at ViT-H size has SegmentAnythingH's image_encoder keys and
    shapes; writes them as a header for the Go plan check."""
    ref = SegmentAnythingH(device="meta")
    want = {k[len("image_encoder."):]: v for k, v in layout(ref).items() if k.startswith("image_encoder.")}
    got = layout(sam_vit(1280, 32, 16, (7, 15, 23, 31), device="meta"))
    assert got == want, f"sam_vit differs from SegmentAnythingH's image_encoder: {set(got) ^ set(want)}"
    # SizedNeck at 256 channels is Refiners' Neck.
    assert layout(SizedNeck(1280, 256, device="meta")) == layout(Neck(1280, device="meta"))
    write_header(here, "sam_vit_h_image_encoder", want)
    print(f"ViT-H image encoder layout matches SegmentAnythingH: {len(want)} tensors")
    decoder = {k[len("mask_decoder."):]: v for k, v in layout(ref).items() if k.startswith("mask_decoder.")}
    write_header(here, "sam_vit_h_mask_decoder", decoder)
    print(f"mask decoder layout: {len(decoder)} tensors")


def write_header(here, name, shapes):
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 4 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    out = here / "testdata" / "headers"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(header, separators=(",", ":")))


def generate(name, out_dir, params, seed=0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = sam_vit(**params).eval()
    with torch.no_grad():
        for key, t in sorted(model.state_dict().items()):
            fan_in = t[0].numel() if t.dim() > 1 else 1
            t.copy_(torch.randn(t.shape, generator=gen) / max(fan_in, 1) ** 0.5)
    size = params.get("image_size", 1024)
    x = torch.randn(1, 3, size, size, generator=gen)
    start = time.perf_counter()
    with torch.no_grad():
        y = model(x)
    took = time.perf_counter() - start
    with torch.no_grad():
        y64 = float64_twin(model)(upcast(x))
    g = list(params["global_attention_indices"]) + [-1] * (4 - len(params["global_attention_indices"]))
    overrides = {k: str(v) for k, v in params.items() if k != "global_attention_indices"}
    overrides.update({f"global_{i + 1}": str(v) for i, v in enumerate(g)})
    save_spec_case(out_dir, name, spec="specs/sam.yaml", overrides=overrides, model=model,
                   inputs={"input.0": x}, outputs=[y], outputs64=[y64], reference="refiners 0.4.0 segment_anything SAMViT",
                   tree=None)
    print(f"{name}: forward {took:.3f}s, output {tuple(y.shape)}, own float32 error {(y.double() - y64).abs().max():.3g}")


def float64_point_types(model):
    """Refiners' PointTypeEmbedding fills a float32 zeros tensor with weight
    rows, which fails for float64 weights. The layer only copies rows, so in
    the float64 twin it runs in float32 (on weights that are float32 values
    upcast) and upcasts: exactly the float64 result."""
    for m in model.modules():
        if isinstance(m, PointTypeEmbedding):
            forward = m.forward

            def exact(type_mask, m=m, forward=forward):
                w = m.weight
                m.weight = torch.nn.Parameter(w.to(torch.float32), requires_grad=False)
                try:
                    return forward(type_mask).to(torch.float64)
                finally:
                    m.weight = w

            m.forward = exact
    return model


def generate_point_encoder(name, out_dir, embedding_dim, points, types, seed):
    """A Refiners PointEncoder on normalised points with their types (the
    context point_encoder/type_mask); output: the sparse embedding."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = PointEncoder(embedding_dim=embedding_dim).eval()
    with torch.no_grad():
        for key, t in sorted(model.state_dict().items()):
            t.copy_(torch.randn(t.shape, generator=gen))
    coords = torch.tensor([points], dtype=torch.float32)
    # Refiners' points_to_tensor makes int32 types; the tensor layer reads
    # int64 (same values, same comparisons).
    mask = torch.tensor([types], dtype=torch.int64)
    with torch.no_grad():
        model.set_type_mask(mask)
        y = model(coords)
        twin = float64_point_types(float64_twin(model))
        twin.set_type_mask(mask)
        y64 = twin(upcast(coords))
    save_spec_case(out_dir, name, spec="specs/sam_point_encoder.yaml", overrides={"embedding_dim": str(embedding_dim)},
                   model=model, inputs={"input.0": coords, "context.point_encoder.type_mask": mask},
                   outputs=[y], outputs64=[y64], reference="refiners 0.4.0 segment_anything PointEncoder")
    print(f"{name}: output {tuple(y.shape)}, own float32 error {(y.double() - y64).abs().max():.3g}")


def mask_decoder(embedding_dim, feed_forward_dim, num_layers, dense_side):
    """Refiners' MaskDecoder, whose MaskPrediction builds its
    DenseEmbeddingUpscaling at the default 64×64 side: at a small size the
    upscaling is replaced by Refiners' own class at dense_side (the final
    Reshape uses embedding_dim as the mask side, so embedding_dim must be
    4·dense_side, as 256 = 4·64 in SAM)."""
    assert embedding_dim == 4 * dense_side
    model = MaskDecoder(embedding_dim=embedding_dim, feed_forward_dim=feed_forward_dim, num_layers=num_layers)
    if dense_side != 64:
        old = model.ensure_find(DenseEmbeddingUpscaling)
        new = DenseEmbeddingUpscaling(embedding_dim=embedding_dim, dense_embedding_side_dim=dense_side)
        old.parent.replace(old, new)
    return model


def generate_mask_decoder(name, out_dir, embedding_dim, feed_forward_dim, num_layers, dense_side, num_points, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = mask_decoder(embedding_dim, feed_forward_dim, num_layers, dense_side).eval()
    with torch.no_grad():
        for key, t in sorted(model.state_dict().items()):
            fan_in = t[0].numel() if t.dim() > 1 else 1
            t.copy_(torch.randn(t.shape, generator=gen) / max(fan_in, 1) ** 0.5)
    grid = (1, embedding_dim, dense_side, dense_side)
    ctx = {
        "image_embedding": torch.randn(grid, generator=gen),
        "mask_embedding": torch.randn(grid, generator=gen),
        "point_embedding": torch.randn(1, num_points, embedding_dim, generator=gen),
        "dense_positional_embedding": torch.randn(grid, generator=gen),
    }

    def run(m, values):
        m.set_image_embedding(values["image_embedding"])
        m.set_mask_embedding(values["mask_embedding"])
        m.set_point_embedding(values["point_embedding"])
        m.set_dense_positional_embedding(values["dense_positional_embedding"])
        with torch.no_grad():
            return m()

    masks, iou = run(model, ctx)
    masks64, iou64 = run(float64_twin(model), upcast(ctx))
    save_spec_case(out_dir, name, spec="specs/sam_mask_decoder.yaml",
                   overrides={"embedding_dim": str(embedding_dim), "feed_forward_dim": str(feed_forward_dim),
                              "num_layers": str(num_layers), "dense_side": str(dense_side)},
                   model=model, inputs={f"context.mask_decoder.{k}": v for k, v in ctx.items()},
                   outputs=[masks, iou], outputs64=[masks64, iou64], reference="refiners 0.4.0 segment_anything MaskDecoder")
    print(f"{name}: masks {tuple(masks.shape)}, iou {tuple(iou.shape)}, own float32 error "
          f"{(masks.double() - masks64).abs().max():.3g}, {(iou.double() - iou64).abs().max():.3g}")


def generate_mask_encoder(name, out_dir, embedding_dim, side, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    # specs/sam_mask_encoder.yaml unwraps its MaskEncoder: the keys are
    # the MaskEncoder's own (SegmentAnythingH's under mask_encoder.).
    model = MaskEncoder(embedding_dim=embedding_dim).eval()
    with torch.no_grad():
        for key, t in sorted(model.state_dict().items()):
            fan_in = t[0].numel() if t.dim() > 1 else 1
            t.copy_(torch.randn(t.shape, generator=gen) / max(fan_in, 1) ** 0.5)
    mask = torch.randn(1, 1, 4 * side, 4 * side, generator=gen) * 4
    with torch.no_grad():
        y = model(mask)
        y64 = float64_twin(model)(upcast(mask))
    save_spec_case(out_dir, name, spec="specs/sam_mask_encoder.yaml", overrides={"embedding_dim": str(embedding_dim)},
                   model=model, inputs={"input.0": mask}, outputs=[y], outputs64=[y64],
                   reference="refiners 0.4.0 segment_anything MaskEncoder", tree=tree_print(model))
    print(f"{name}: output {tuple(y.shape)}, own float32 error {(y.double() - y64).abs().max():.3g}")


def generate_dense_positional_embedding(out_dir, embedding_dim, side, seed):
    """PointEncoder.get_dense_positional_embedding((side, side)) on random
    weights, for conformance/sam_test.go. Its float64 twin computes the
    grid (i + 0.5)/side in float64 (Refiners makes it in float32)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = PointEncoder(embedding_dim=embedding_dim).eval()
    with torch.no_grad():
        for key, t in sorted(model.state_dict().items()):
            t.copy_(torch.randn(t.shape, generator=gen))
        y = model.get_dense_positional_embedding((side, side))
        twin = float64_twin(model)
        centres = (torch.arange(side, dtype=torch.float64) + 0.5) / side
        yy, xx = torch.meshgrid(centres, centres, indexing="ij")
        encoder = twin.ensure_find(type(model[0]))
        y64 = encoder(torch.stack([xx, yy], dim=-1)).permute(2, 0, 1).unsqueeze(0)
    tensors = {f"param.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors.update(reference_tensors([y], [y64]))
    meta = {"overrides": json.dumps({"embedding_dim": str(embedding_dim)}), "side": str(side),
            "reference": f"torch {torch.__version__}, refiners 0.4.0 PointEncoder.get_dense_positional_embedding",
            **reference_error_note([y], [y64])}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "dense_positional_embedding.safetensors"), metadata=meta)
    print(f"dense positional embedding: {tuple(y.shape)}, own float32 error {(y.double() - y64).abs().max():.3g}")


def dense_pe64(point_encoder64, side):
    """get_dense_positional_embedding of a float64 point encoder (Refiners
    builds the grid in float32, which a float64 Linear refuses): the grid
    (i + 0.5)/side in float64."""
    centres = (torch.arange(side, dtype=torch.float64) + 0.5) / side
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    encoder = point_encoder64.ensure_find(type(point_encoder64[0]))
    return encoder(torch.stack([xx, yy], dim=-1)).permute(2, 0, 1).unsqueeze(0)


def generate_decode(out_dir, name, embedding_dim, side, points, types, with_mask, seed):
    """The middle of SegmentAnything.predict (prompts and an image embedding
    to low-res masks and IoU) with Refiners' PointEncoder, MaskEncoder and
    MaskDecoder at a small size, for sam.Decode (conformance/sam_test.go)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    parts = {
        "point_encoder": PointEncoder(embedding_dim=embedding_dim),
        "mask_encoder": MaskEncoder(embedding_dim=embedding_dim),
        "mask_decoder": mask_decoder(embedding_dim, 2 * embedding_dim, 2, side),
    }
    with torch.no_grad():
        for part in parts.values():
            part.eval()
            for key, t in sorted(part.state_dict().items()):
                fan_in = t[0].numel() if t.dim() > 1 else 1
                t.copy_(torch.randn(t.shape, generator=gen) / max(fan_in, 1) ** 0.5)
    image_embedding = torch.randn(1, embedding_dim, side, side, generator=gen)
    coords = torch.tensor([points], dtype=torch.float32)
    mask = torch.tensor([types], dtype=torch.int64)
    low_res = torch.randn(1, 1, 4 * side, 4 * side, generator=gen) * 4 if with_mask else None

    def run(parts, image_embedding, coords, low_res, float64):
        pe, me, md = parts["point_encoder"], parts["mask_encoder"], parts["mask_decoder"]
        with torch.no_grad():
            pe.set_type_mask(mask)
            mask_embedding = me(low_res) if low_res is not None else me.get_no_mask_dense_embedding((side, side))
            point_embedding = pe(coords)
            dense = dense_pe64(pe, side) if float64 else pe.get_dense_positional_embedding((side, side))
            md.set_image_embedding(image_embedding)
            md.set_mask_embedding(mask_embedding)
            md.set_point_embedding(point_embedding)
            md.set_dense_positional_embedding(dense)
            return md()

    masks, iou = run(parts, image_embedding, coords, low_res, False)
    parts64 = {k: float64_twin(v) for k, v in parts.items()}
    float64_point_types(parts64["point_encoder"])
    masks64, iou64 = run(parts64, upcast(image_embedding), upcast(coords), upcast(low_res), True)
    tensors = {f"param.{p}.{k}": v.contiguous() for p, part in parts.items() for k, v in part.state_dict().items()}
    tensors.update({"input.image_embedding": image_embedding, "input.points": coords, "input.types": mask})
    if low_res is not None:
        tensors["input.low_res_mask"] = low_res
    outputs, outputs64 = {"masks": masks, "iou": iou}, {"masks": masks64, "iou": iou64}
    tensors.update(reference_tensors(outputs, outputs64))
    meta = {"embedding_dim": str(embedding_dim), "side": str(side),
            "reference": f"torch {torch.__version__}, refiners 0.4.0 SegmentAnything.predict's prompt side",
            **reference_error_note(outputs, outputs64)}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / f"{name}.safetensors"), metadata=meta)
    print(f"{name}: masks {tuple(masks.shape)}, iou {tuple(iou.shape)}, own float32 error "
          f"{(masks.double() - masks64).abs().max():.3g}, {(iou.double() - iou64).abs().max():.3g}")


if __name__ == "__main__":
    here = Path(__file__).parent
    check_full_size_layout(here)
    if "--full" in sys.argv:
        generate("sam_vit_h_image_encoder", here / "testdata" / "full",
                 dict(embedding_dim=1280, num_layers=32, num_heads=16, global_attention_indices=(7, 15, 23, 31)))
    elif "--vit-b" in sys.argv:
        # ViT-B's sizes at 1024 px (the 64×64 grid padded to 70×70 for the
        # 14×14 windows, head dim 64): a real-size check lighter than ViT-H.
        generate("sam_vit_b_image_encoder", here / "testdata" / "full",
                 dict(embedding_dim=768, num_layers=12, num_heads=12, global_attention_indices=(2, 5, 8, 11)))
    else:
        generate("sam_image_encoder_tiny", here / "testdata" / "specs",
                 dict(embedding_dim=16, num_layers=3, num_heads=2, global_attention_indices=(1,), image_size=128,
                      window_size=3, neck_dim=16))
        # Points only (a not-a-point is appended), and a point with a box.
        generate_point_encoder("sam_point_encoder_points_tiny", here / "testdata" / "specs", 16,
                               [(0.25, 0.5), (0.7, 0.1), (0.9, 0.95)], [2, 2, 1], seed=10)
        generate_point_encoder("sam_point_encoder_box_tiny", here / "testdata" / "specs", 16,
                               [(0.4, 0.4), (0.1, 0.2), (0.8, 0.6)], [2, 3, 4], seed=20)
        generate_dense_positional_embedding(here / "testdata" / "sam", 16, 8, seed=50)
        generate_decode(here / "testdata" / "sam", "decode_points", 32, 8, [(0.3, 0.6), (0.7, 0.2)], [2, 1], False, seed=60)
        generate_decode(here / "testdata" / "sam", "decode_box_mask", 32, 8, [(0.5, 0.5), (0.2, 0.3), (0.8, 0.9)], [2, 3, 4], True, seed=70)
        generate_mask_encoder("sam_mask_encoder_tiny", here / "testdata" / "specs", 32, 8, seed=40)
        generate_mask_decoder("sam_mask_decoder_tiny", here / "testdata" / "specs", 32, 64, 2, 8, num_points=3, seed=30)
