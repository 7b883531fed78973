"""Golden vectors for official Segment Anything checkpoints: the predictor
(models/sam/predict) loading a segment_anything state dict saved by
torch.save (keys renamed by models/sam/samkeys, read by torchfile),
checked against the official SamPredictor (segment-anything 1.0) on the
same weights, image and prompts.

    conformance/.venv/bin/python conformance/generate_sam_official.py \
        [--full [--size vit_b|vit_l|vit_h]] [--cases points,box,...]

Default (committed, testdata/sam_official): a small official Sam built from
segment_anything's own classes (ImageEncoderViT at a 128 px image, 16 px
patches, width 16, 3 blocks with block 1 global, 3×3 windows, a 32-channel
neck; PromptEncoder and MaskDecoder at width 32), random weights.
--full (testdata/full/sam_official_<size>, not committed):
sam_model_registry[<size>] at its real size (1024 px; vit_b, the default,
about 90M parameters and a 358 MiB .pth; vit_l about 308M and 1.2 GiB).
--cases keeps only the named cases (points_mask needs points), for slow
machines: the encoder runs once per distinct image and precision.

Each case is SamPredictor.set_image + predict(multimask_output=True,
return_logits=True): the image embedding, the three mask logits at the
original size, the IoU predictions and the low-res logits. The float64
twin runs the same model in float64 through predict_torch with float64
prompts (the official predict casts coordinates to float32, and its
positional encodings are made in float32; the twin's are made in float64).
"""

import json
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from generate_sam_predict import test_image
from golden import reference_error_note, reference_tensors


def tiny_official():
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=3, embed_dim=16, img_size=128, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,), window_size=3,
            out_chans=32),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(128, 128),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=8),
                                 transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=32),
    )


def randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in sorted(model.state_dict().items()):
            fan_in = t[0].numel() if t.dim() > 1 else 1
            t.copy_(torch.randn(t.shape, generator=gen) / max(fan_in, 1) ** 0.5)


def exact_coords(self, coords_input, image_size):
    """PositionEmbeddingRandom.forward_with_coords without the cast to
    float32, for the float64 twin."""
    coords = coords_input.clone()
    coords[:, :, 0] = coords[:, :, 0] / image_size[1]
    coords[:, :, 1] = coords[:, :, 1] / image_size[0]
    return self._pe_encoding(coords)


def exact_grid(self, size):
    """PositionEmbeddingRandom.forward (the dense positional encoding) with
    its grid in float64 (it makes it in float32), for the float64 twin."""
    h, w = size
    grid = torch.ones((h, w), dtype=torch.float64)
    y = (grid.cumsum(dim=0) - 0.5) / h
    x = (grid.cumsum(dim=1) - 0.5) / w
    return self._pe_encoding(torch.stack([x, y], dim=-1)).permute(2, 0, 1)


def option(name, default):
    if name in sys.argv:
        i = sys.argv.index(name)
        if i + 1 >= len(sys.argv):
            sys.exit(f"{name} needs a value")
        return sys.argv[i + 1]
    return default


def main():
    full = "--full" in sys.argv
    size = option("--size", "vit_b")
    if size not in sam_model_registry or size == "default":
        sys.exit(f"--size {size}: not one of vit_b, vit_l, vit_h")
    if not full and "--size" in sys.argv:
        sys.exit("--size needs --full (the default model is the small one)")
    keep = option("--cases", None)
    here = Path(__file__).parent
    out = here / "testdata" / (f"full/sam_official_{size}" if full else "sam_official")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    build = sam_model_registry[size] if full else tiny_official
    model = build()
    model.eval()
    randomize(model, seed=300)
    torch.save(model.state_dict(), out / "model.pth")
    twin = build()
    twin.load_state_dict(model.state_dict())
    twin = twin.double().eval()
    pe = twin.prompt_encoder.pe_layer
    pe.forward_with_coords = types.MethodType(exact_coords, pe)
    pe.forward = types.MethodType(exact_grid, pe)

    images = {"wide": test_image(150, 97, 1), "tall": test_image(45, 70, 2)}
    cases = [
        # name, image, foreground, background, box, mask from case
        ("points", "wide", [(40.0, 30.5), (100.0, 60.0)], [(12.0, 80.0)], None, None),
        ("box", "wide", [], [], (20.0, 15.0, 120.0, 90.0), None),
        ("points_box", "tall", [(20.0, 33.0)], [(5.5, 60.0)], (3.0, 10.0, 40.0, 66.0), None),
        ("points_mask", "wide", [(40.0, 30.5), (100.0, 60.0)], [(12.0, 80.0)], None, "points"),
    ]
    if keep is not None:
        names = keep.split(",")
        unknown = set(names) - {c[0] for c in cases}
        if unknown:
            sys.exit(f"--cases: unknown {sorted(unknown)}")
        cases = [c for c in cases if c[0] in names]
        for c in cases:
            if c[5] is not None and c[5] not in names:
                sys.exit(f"--cases: {c[0]} needs {c[5]}")
    low_of = {}
    # One predictor pair per image: the encoder runs once per image.
    predictors = {}
    for name, image_name, fg, bg, box, mask_from in cases:
        image = images[image_name]
        if image_name not in predictors:
            predictors[image_name] = (SamPredictor(model), SamPredictor(twin))
            with torch.no_grad():
                predictors[image_name][0].set_image(np.array(image))
                predictors[image_name][1].set_image(np.array(image))
        predictor, predictor64 = predictors[image_name]
        image.save(out / f"{image_name}.png")
        # Background first, then foreground: Refiners' order (the
        # official predictor keeps the caller's).
        pts = bg + fg
        coords = np.array(pts, dtype=np.float64).reshape(-1, 2) if pts else None
        labels = np.array([0] * len(bg) + [1] * len(fg)) if pts else None
        box_np = np.array(box, dtype=np.float64) if box else None
        mask_in = None
        if mask_from is not None:
            low, iou = low_of[mask_from]
            mask_in = low[int(np.argmax(iou))][None].astype(np.float32)
        with torch.no_grad():
            masks, iou, low = predictor.predict(point_coords=coords, point_labels=labels, box=box_np,
                                                mask_input=mask_in, multimask_output=True, return_logits=True)
            embedding = predictor.features.clone()
            size = (image.height, image.width)
            c64 = l64 = b64 = m64 = None
            if coords is not None:
                c64 = torch.as_tensor(predictor64.transform.apply_coords(coords, size), dtype=torch.float64)[None]
                l64 = torch.as_tensor(labels, dtype=torch.int)[None]
            if box_np is not None:
                b64 = torch.as_tensor(predictor64.transform.apply_boxes(box_np, size), dtype=torch.float64)[None]
            if mask_in is not None:
                m64 = torch.as_tensor(mask_in, dtype=torch.float64)[None]
            masks64, iou64, low64 = predictor64.predict_torch(c64, l64, b64, m64, multimask_output=True,
                                                              return_logits=True)
        low_of[name] = (low, iou)
        outputs = {"embedding": embedding, "masks": torch.from_numpy(masks)[None], "iou": torch.from_numpy(iou)[None],
                   "low_res": torch.from_numpy(low)[None]}
        outputs64 = {"embedding": predictor64.features, "masks": masks64, "iou": iou64, "low_res": low64}
        tensors = reference_tensors(outputs, outputs64)
        if mask_in is not None:
            tensors["input.low_res_mask"] = torch.from_numpy(mask_in).contiguous()
        prompt = {"image": f"{image_name}.png", "foreground": fg, "background": bg,
                  "box": [list(box[:2]), list(box[2:])] if box else None, "mask": mask_in is not None}
        meta = {"prompt": json.dumps(prompt), "model": "model.pth",
                "reference": f"torch {torch.__version__}, segment-anything 1.0 SamPredictor.predict(return_logits=True)",
                **reference_error_note(outputs, outputs64)}
        save_file(tensors, str(out / f"{name}.safetensors"), metadata=meta)
        print(f"{name}: masks {masks.shape}, iou {iou.tolist()}, own float32 error "
              + ", ".join(f"{k} {v}" for k, v in reference_error_note(outputs, outputs64).items()))


if __name__ == "__main__":
    main()
