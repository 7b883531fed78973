"""The reference side of `refiners-bench -mode sd15`: Refiners 0.4.0's
StableDiffusion_1 on the benchmark's random full-size weights (Refiners'
layout, written by `refiners-bench -mode sd15-weights`), one generation
timed part by part as models/sd15 is, peak RSS at the end. Prints one line
"BENCH {json}".

    conformance/.venv/bin/python conformance/bench_pipeline.py --dir DIR [--steps 3] [--size 512]
"""

import argparse
import json
import os
import resource
import time

import torch
from refiners.fluxion.utils import load_from_safetensors
from refiners.foundationals.clip.text_encoder import CLIPTextEncoderL
from refiners.foundationals.latent_diffusion.solvers import DPMSolver
from refiners.foundationals.latent_diffusion.stable_diffusion_1.model import SD1Autoencoder, StableDiffusion_1
from refiners.foundationals.latent_diffusion.stable_diffusion_1.unet import SD1UNet


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    a = ap.parse_args()
    start = time.perf_counter()
    unet, lda, text = SD1UNet(in_channels=4), SD1Autoencoder(), CLIPTextEncoderL()
    for model, name in ((unet, "unet"), (text, "text_encoder"), (lda, "autoencoder")):
        model.load_state_dict(load_from_safetensors(os.path.join(a.dir, f"{name}.safetensors")))
    sd = StableDiffusion_1(unet=unet, lda=lda, clip_text_encoder=text, solver=DPMSolver(num_inference_steps=a.steps))
    load = time.perf_counter() - start
    steps = []
    with torch.no_grad():
        begin = time.perf_counter()
        emb = sd.compute_clip_text_embedding("a photograph of an astronaut riding a horse")
        torch.manual_seed(2)
        noise = torch.randn(1, 4, a.size // 8, a.size // 8)
        x = sd.init_latents((a.size, a.size), noise=noise)
        text_s = time.perf_counter() - begin
        for step in sd.steps:
            t = time.perf_counter()
            x = sd(x, step=step, clip_text_embedding=emb, condition_scale=7.5)
            steps.append(time.perf_counter() - t)
        t = time.perf_counter()
        sd.lda.latents_to_image(x)
        decode = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("BENCH " + json.dumps({"side": "refiners", "load_seconds": load, "step_seconds": steps, "text_seconds": text_s,
                                 "decode_seconds": decode, "peak_rss_bytes": rss, "threads": str(torch.get_num_threads())}))


if __name__ == "__main__":
    main()
