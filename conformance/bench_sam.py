"""The reference side of `refiners-bench -mode sam`: Refiners 0.4.0's
SegmentAnything on the benchmark's random weights, driven line by line so
that the Go side can interleave its own timings with these.

    conformance/.venv/bin/python conformance/bench_sam.py --weights FILE --image IMG [--size vit_b]

With --write, FILE is first written: random weights in Refiners'
SegmentAnything layout at the given size (vit_h: SegmentAnythingH's own
image encoder; vit_b and vit_l: Refiners' SAMViT classes at those sizes, as
conformance/generate_sam.py builds them; tiny: the predictor test's
model), then the script exits.

Commands on stdin, one per line, each answered by one line on stdout:
  embed       compute_image_embedding(image)        -> "T <seconds>"
  decode      predict(embedding, one foreground point) -> "T <seconds>"
  quit
"""

import argparse
import sys
import time

import torch
from PIL import Image
from refiners.fluxion.utils import load_from_safetensors
from refiners.foundationals.segment_anything.model import SegmentAnything
from refiners.foundationals.segment_anything.prompt_encoder import MaskEncoder, PointEncoder
from safetensors.torch import save_file

from generate_sam import mask_decoder, sam_vit

SIZES = {
    # embedding_dim, num_layers, num_heads, global layers, image size, window, neck
    "vit_h": (1280, 32, 16, (7, 15, 23, 31), 1024, 14, 256),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23), 1024, 14, 256),
    "vit_b": (768, 12, 12, (2, 5, 8, 11), 1024, 14, 256),
    "tiny": (16, 3, 2, (1,), 128, 3, 32),
}


def build(size):
    dim, layers, heads, globals_, image, window, neck = SIZES[size]
    vit = sam_vit(dim, layers, heads, globals_, image_size=image, window_size=window, neck_dim=neck)
    side = image // 16
    vit.image_size = (image, image)
    vit.patch_size = 16
    vit.image_embedding_size = (side, side)
    model = SegmentAnything(vit, PointEncoder(embedding_dim=neck), MaskEncoder(embedding_dim=neck),
                            mask_decoder(neck, 2048 if neck == 256 else 2 * neck, 2, side))
    return model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--image")
    ap.add_argument("--size", default="vit_b", choices=sorted(SIZES))
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    model = build(a.size)
    if a.write:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for key, t in sorted(model.state_dict().items()):
                fan_in = t[0].numel() if t.dim() > 1 else 1
                t.copy_(torch.randn(t.shape, generator=gen) / max(fan_in, 1) ** 0.5)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, a.weights,
                  metadata={"bench_size": a.size})
        return
    model.load_state_dict(load_from_safetensors(a.weights))
    image = Image.open(a.image).convert("RGB")
    point = (image.width * 0.4, image.height * 0.6)
    embedding = None
    print(f"READY threads={torch.get_num_threads()}", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        with torch.no_grad():
            start = time.perf_counter()
            if cmd == "embed":
                embedding = model.compute_image_embedding(image)
            elif cmd == "decode":
                model.predict(embedding, foreground_points=[point])
            elif cmd == "quit":
                return
            else:
                print(f"ERROR unknown command {cmd!r}", flush=True)
                continue
            print(f"T {time.perf_counter() - start:.6f}", flush=True)


if __name__ == "__main__":
    main()
