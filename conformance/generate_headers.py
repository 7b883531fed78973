"""Real-layout weights headers, without weights.

Builds reference models at full size on PyTorch's "meta" device (shapes
only, no memory) and writes their state-dict layout as a safetensors header
(JSON: key -> dtype, shape, data_offsets for float32). Tests turn a header
into a sparse file of the full size to check that `plan` reads headers
alone. Run with conformance/.venv/bin/python.
"""

import json
from pathlib import Path

from refiners.foundationals.latent_diffusion.stable_diffusion_1.unet import SD1UNet


def header(module):
    out, offset = {}, 0
    for key, t in module.state_dict().items():
        size = t.numel() * 4
        out[key] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    return out


if __name__ == "__main__":
    here = Path(__file__).parent / "testdata" / "headers"
    here.mkdir(parents=True, exist_ok=True)
    unet = SD1UNet(in_channels=4, device="meta")
    h = header(unet)
    (here / "sd15_unet.json").write_text(json.dumps(h, separators=(",", ":")))
    print(f"sd15_unet: {len(h)} tensors, {sum(v['data_offsets'][1] - v['data_offsets'][0] for v in h.values()) / 2**30:.2f} GiB")
