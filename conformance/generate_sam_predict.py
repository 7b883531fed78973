"""Golden vectors for the SAM predictor (models/sam/predict): Refiners
0.4.0's SegmentAnything.predict end to end, on a small model built from
Refiners' own classes with random weights.

    conformance/.venv/bin/python conformance/generate_sam_predict.py

The model: SAMViT at a 128 px image (16 px patches, an 8×8 grid, width 16,
3 layers with layer 1 global, 2 heads, 3×3 windows) with a 32-channel neck,
and PointEncoder, MaskEncoder and MaskDecoder at width 32 (the decoder's
mask side is 4·8 = 32, as 256 = 4·64 in SAM). Its state dict is Refiners'
SegmentAnything layout (image_encoder., point_encoder., mask_encoder.,
mask_decoder.), saved as testdata/sam/predict_model.safetensors: what
Refiners' converter writes for SegmentAnythingH, at a small size.

Each case runs predict(binarize=False) on a PNG (one wider than tall, shrunk
to 128 px; one taller than wide, enlarged) with points, a box, both, and a
low-res mask prompt (the previous case's best mask). Outputs: the image
embedding, the high-res mask logits at the original size, the IoU
predictions and the low-res logits; the pre-processed image (compared
exactly: PIL's bilinear resize and the normalisation are reproduced
bit for bit). The float64 twin repeats predict's steps in float64 on the
same resized pixels (predict itself builds float32 tensors).
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from refiners.foundationals.segment_anything.model import SegmentAnything
from refiners.foundationals.segment_anything.prompt_encoder import MaskEncoder, PointEncoder
from safetensors.torch import save_file

from generate_sam import dense_pe64, float64_point_types, mask_decoder, sam_vit
from golden import float64_twin, reference_error_note, reference_tensors

IMAGE_SIZE, PATCH, WIDTH = 128, 16, 32
SIDE = IMAGE_SIZE // PATCH


def tiny_sam(seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    vit = sam_vit(16, 3, 2, (1,), image_size=IMAGE_SIZE, patch_size=PATCH, window_size=3, neck_dim=WIDTH)
    # SAMViT.__init__ sets these; sam_vit builds the chain without it.
    vit.image_size = (IMAGE_SIZE, IMAGE_SIZE)
    vit.patch_size = PATCH
    vit.image_embedding_size = (SIDE, SIDE)
    model = SegmentAnything(vit, PointEncoder(embedding_dim=WIDTH), MaskEncoder(embedding_dim=WIDTH),
                            mask_decoder(WIDTH, 2 * WIDTH, 2, SIDE)).eval()
    with torch.no_grad():
        for key, t in sorted(model.state_dict().items()):
            fan_in = t[0].numel() if t.dim() > 1 else 1
            t.copy_(torch.randn(t.shape, generator=gen) / max(fan_in, 1) ** 0.5)
    return model


def test_image(w, h, seed):
    """Smooth shapes plus noise: edges the resize must get right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), dtype=np.float64)
    img[..., 0] = 255 * (xx / max(w - 1, 1))
    img[..., 1] = 255 * ((xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 3) ** 2)
    img[..., 2] = 128 + 100 * np.sin(yy / 3.0)
    img += rng.normal(0, 20, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def predict64(model64, image, fg, bg, box, low_res):
    """SegmentAnything.predict in float64 (same steps, same resized pixels)."""
    original = (image.height, image.width)
    target = model64.compute_target_size(original)
    h, w = target
    pixels = torch.tensor(np.array(image.resize((w, h), resample=Image.Resampling.BILINEAR)).astype(np.float64)
                          .transpose(2, 0, 1)).unsqueeze(0)
    mean = torch.tensor([123.675, 116.28, 103.53], dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375], dtype=torch.float64).view(-1, 1, 1)
    x = F.pad((pixels - mean) / std, (0, IMAGE_SIZE - w, 0, IMAGE_SIZE - h))
    embedding = model64.image_encoder(x)
    coords, types = model64.point_encoder.points_to_tensor(foreground_points=fg, background_points=bg,
                                                            box_points=box)
    coords = coords.to(torch.float64)
    coords[:, :, 0] = (coords[:, :, 0] * (w / original[1]) + 0.5) / IMAGE_SIZE
    coords[:, :, 1] = (coords[:, :, 1] * (h / original[0]) + 0.5) / IMAGE_SIZE
    pe, me, md = model64.point_encoder, model64.mask_encoder, model64.mask_decoder
    pe.set_type_mask(types)
    mask_embedding = me(low_res) if low_res is not None else me.get_no_mask_dense_embedding((SIDE, SIDE))
    md.set_image_embedding(embedding)
    md.set_mask_embedding(mask_embedding)
    md.set_point_embedding(pe(coords))
    md.set_dense_positional_embedding(dense_pe64(pe, SIDE))
    low, iou = md()
    high = F.interpolate(low, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")[..., :h, :w]
    high = F.interpolate(high, size=original, mode="bilinear")
    return embedding, x, high, iou, low


def main():
    here = Path(__file__).parent
    out = here / "testdata" / "sam"
    out.mkdir(parents=True, exist_ok=True)
    model = tiny_sam(seed=100)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "predict_model.safetensors"),
              metadata={"reference": f"torch {torch.__version__}, refiners 0.4.0 SegmentAnything (tiny, random)"})
    model64 = float64_twin(model)
    float64_point_types(model64.point_encoder)

    images = {"wide": test_image(150, 97, 1), "tall": test_image(45, 70, 2)}
    cases = [
        # name, image, foreground, background, box, mask from case
        ("points", "wide", [(40.0, 30.5), (100.0, 60.0)], [(12.0, 80.0)], None, None),
        ("box", "wide", [], [], [[(20.0, 15.0), (120.0, 90.0)]], None),
        ("points_box", "tall", [(20.0, 33.0)], [(5.5, 60.0)], [[(3.0, 10.0), (40.0, 66.0)]], None),
        ("points_mask", "wide", [(40.0, 30.5), (100.0, 60.0)], [(12.0, 80.0)], None, "points"),
        ("one_point", "tall", [(44.0, 0.0)], [], None, None),
    ]
    low_res_of = {}
    for name, image_name, fg, bg, box, mask_from in cases:
        image = images[image_name]
        image.save(out / f"predict_{image_name}.png")
        low_res = None
        if mask_from is not None:
            low, iou = low_res_of[mask_from]
            best = int(iou[0].argmax())
            low_res = low[:, best:best + 1].clone()
        with torch.no_grad():
            embedding = model.compute_image_embedding(image)
            target = model.compute_target_size((image.height, image.width))
            pre = model.preprocess_image(image, target)
            high, iou, low = model.predict(embedding, foreground_points=fg or None, background_points=bg or None,
                                           box_points=box, low_res_mask=low_res, binarize=False)
            # predict on the image itself gives the same (the embedding is reusable).
            high2, _, _ = model.predict(image, foreground_points=fg or None, background_points=bg or None,
                                        box_points=box, low_res_mask=low_res, binarize=False)
            assert torch.equal(high, high2)
            emb64, pre64, high64, iou64, low64 = predict64(model64, image, fg, bg, box,
                                                           None if low_res is None else low_res.double())
        low_res_of[name] = (low, iou)
        outputs = {"embedding": embedding.features, "masks": high, "iou": iou, "low_res": low}
        outputs64 = {"embedding": emb64, "masks": high64, "iou": iou64, "low_res": low64}
        tensors = reference_tensors(outputs, outputs64)
        tensors["output.preprocessed"] = pre.contiguous()
        if low_res is not None:
            tensors["input.low_res_mask"] = low_res.contiguous()
        prompt = {"image": f"predict_{image_name}.png", "foreground": fg, "background": bg,
                  "box": box[0] if box else None, "mask": low_res is not None}
        meta = {"prompt": json.dumps(prompt), "model": "predict_model.safetensors",
                "reference": f"torch {torch.__version__}, refiners 0.4.0 SegmentAnything.predict(binarize=False)",
                **reference_error_note(outputs, outputs64)}
        save_file(tensors, str(out / f"predict_{name}.safetensors"), metadata=meta)
        print(f"predict_{name}: masks {tuple(high.shape)}, iou {iou.tolist()}, own float32 error "
              + ", ".join(f"{k} {v}" for k, v in reference_error_note(outputs, outputs64).items()))


if __name__ == "__main__":
    main()
