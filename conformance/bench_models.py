"""The reference side of `refiners-bench -mode vs-refiners`: one Refiners
0.4.0 model built and loaded from the benchmark's full-size random weights
(written by `refiners-bench -mode sd15-weights`), then run forward on the
same seeded inputs as the Go side. Prints one line "BENCH {json}": time to a
ready model (construction + load, after the imports), each forward's
seconds, the output's mean |x| (to show both sides computed the same thing)
and the process's peak RSS.

    conformance/.venv/bin/python conformance/bench_models.py --dir DIR --model unet|vae|clip [--dtype float32] [--forwards 1]
"""

import argparse
import json
import os
import resource
import time

import torch
from safetensors import safe_open
from refiners.foundationals.clip.text_encoder import CLIPTextEncoderL
from refiners.foundationals.latent_diffusion.auto_encoder import Decoder
from refiners.foundationals.latent_diffusion.stable_diffusion_1.unet import SD1UNet

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def tokens(batch, length=77):
    """The Go side's token ids: start token, then a fixed pseudo-random walk."""
    return torch.tensor([[49406] + [(i * 7919 + b * 13) % 49406 for i in range(1, length)] for b in range(batch)], dtype=torch.int64)


def load(path, prefix, dtype):
    """The file's tensors under prefix, prefix stripped (only those are read)."""
    out = {}
    with safe_open(path, framework="pt") as f:
        for k in f.keys():
            if k.startswith(prefix):
                out[k[len(prefix):]] = f.get_tensor(k)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--model", required=True, choices=["unet", "vae", "clip"])
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--forwards", type=int, default=1)
    ap.add_argument("--latent", type=int, default=64, help="latent side of the UNet and VAE decoder inputs")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dt = DTYPES[a.dtype]
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    if a.model == "unet":
        model = SD1UNet(in_channels=4, dtype=dt)
        model.load_state_dict(load(os.path.join(a.dir, "unet.safetensors"), "", dt))
    elif a.model == "vae":
        model = Decoder(dtype=dt)
        model.load_state_dict(load(os.path.join(a.dir, "autoencoder.safetensors"), "Decoder.", dt))
    else:
        model = CLIPTextEncoderL(dtype=dt)
        model.load_state_dict(load(os.path.join(a.dir, "text_encoder.safetensors"), "", dt))
        model.pop(0)  # the tokenizer: both sides take token ids
    model.eval()
    # Refiners 0.4.0's SD1UNet leaves a few layers in float32 whatever the
    # dtype it is given (the up blocks' GroupNorms, ...): cast the stragglers.
    model.to(device=a.device, dtype=dt)
    ready = time.perf_counter() - start
    n = a.latent
    if a.model == "unet":
        torch.manual_seed(1)
        x = torch.randn(2, 4, n, n).to(dt)
        torch.manual_seed(2)
        emb = torch.randn(2, 77, 768).to(dt)
        model.set_timestep(torch.tensor([999], dtype=torch.int64).to(a.device))
        model.set_clip_text_embedding(emb.to(a.device))
    elif a.model == "vae":
        torch.manual_seed(3)
        x = torch.randn(1, 4, n, n).to(dt)
    else:
        x = tokens(2)
    x = x.to(a.device)
    forwards = []
    for _ in range(a.forwards):
        t = time.perf_counter()
        y = model(x)
        out_abs_mean = y.float().abs().mean().item()  # reading a value back waits for a device
        forwards.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("BENCH " + json.dumps({"side": "refiners", "ready_seconds": ready, "forward_seconds": forwards,
                                 "out_abs_mean": out_abs_mean, "peak_rss_bytes": rss,
                                 "threads": str(torch.get_num_threads())}))


if __name__ == "__main__":
    main()
