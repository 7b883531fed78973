"""Golden vectors for the Stable Diffusion 1.5 pipeline (models/sd15,
`refinersd generate`): Refiners 0.4.0's StableDiffusion_1 and
StableDiffusion_1_Inpainting end to end, from the prompt to the PNG.

    conformance/.venv/bin/python conformance/generate_pipeline.py [--full]

Each case runs Refiners' own pipeline code the way its tests do:
set_inference_steps(steps, first_step), compute_clip_text_embedding(prompt,
negative), torch.manual_seed(seed); torch.randn(1, 4, H/8, W/8) as the
noise, init_latents((H, W), init_image, noise), then `x = sd(x, step,
clip_text_embedding, condition_scale)` for every step, then
lda.latents_to_image(x). Inpainting first calls
set_inpainting_conditions(image, mask, latents_size=(H/8, W/8)).

Written per case (testdata/pipeline/<name>.case.safetensors): output.0 (the
final latents, float32) and ref64.0 (the same pipeline with every module
golden.float64_twin'd, the solver in float64 and the noise upcast), the
request as JSON metadata, and
<name>.png / <name>.ref64.png, the decoded images (uint8 RGB, PNG is
lossless).

Tiny models (committed, testdata/pipeline): the SD 1.5 topology at small
widths, weights stored as float16 values (both sides compute in float32 on
the same values, exactly representable) to keep the files small:
  - U-Net: generate_sd15_unet.sized_unet, widths 4/8/12, 2 groups, 2 heads,
    timestep embedding 16 (sinusoidal 4), text embedding 4; in_channels 4
    and an inpainting one with 9;
  - text encoder: CLIPTextEncoder with CLIP-L's 12 layers and vocabulary
    (49,408 tokens, 77 positions, Refiners' own CLIPTokenizer) at width 4,
    named CLIPTextEncoderL (the LoRA file's keys start with the root class);
  - autoencoder: generate_sd15_vae's encoder/decoder at widths 4/8/8/8;
  - images 64x48 (latents 8x6).
Full (--full, testdata/full/pipeline, not committed; `make
conformance-pipeline-full`): SD1UNet, CLIPTextEncoderL and SD1Autoencoder
themselves with random weights, 512x512, 10 steps, one case per kind
(txt2img, img2img, inpainting, LoRA). The float64 runs make it slow, and
memory-hungry: the float64 copies of the models alone take 8.5 GB.
"""

import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import refiners.fluxion.layers as fl
import torch
from PIL import Image
from refiners.foundationals.clip.text_encoder import CLIPTextEncoder
from refiners.foundationals.latent_diffusion.solvers import DDIM, DPMSolver, Euler
from refiners.foundationals.latent_diffusion.stable_diffusion_1 import unet as sd1
from refiners.foundationals.latent_diffusion.stable_diffusion_1.model import (
    SD1Autoencoder,
    StableDiffusion_1,
    StableDiffusion_1_Inpainting,
)
from refiners.fluxion.utils import image_to_tensor
from safetensors.torch import save_file

import generate_controlnet as gc
import generate_lora as gl
import golden
import generate_sd15_unet as gu
import generate_sd15_vae as gv

HERE = Path(__file__).resolve().parent

UNET_TINY = dict(gu.TINY, sinusoidal_embedding_dim=4, timestep_embedding_dim=16, clip_embedding_dim=4)
TEXT_TINY = dict(embedding_dim=4, max_sequence_length=77, vocabulary_size=49408, num_layers=12,
                 num_attention_heads=2, feedforward_dim=8)
VAE_TINY = dict(widths=[4, 8, 8, 8], groups=2)

SOLVERS = {"dpm": DPMSolver, "ddim": DDIM, "euler": Euler}
PROMPT = "a photograph of an astronaut riding a horse, 35mm, golden hour"
NEGATIVE = "blurry, low quality"
LONG = " ".join(["a very long prompt about many small colourful things"] * 12)  # over 75 tokens


def tiny_text_encoder():
    class CLIPTextEncoderL(CLIPTextEncoder):  # the name Refiners-format LoRA keys start with
        def __init__(self):
            super().__init__(**TEXT_TINY, use_quick_gelu=True)

    return CLIPTextEncoderL()


def tiny_autoencoder():
    enc, dec = gv.encoder(VAE_TINY["widths"], VAE_TINY["groups"]), gv.decoder(VAE_TINY["widths"], VAE_TINY["groups"])
    ae = SD1Autoencoder.__new__(SD1Autoencoder)
    fl.Chain.__init__(ae, enc, dec)
    return ae


def randomize(model, gen, half=True):
    """Seeded weights keeping activations O(1) (1/sqrt(fan_in) for matrices
    and kernels, 1 + 0.1·N for norm scales, 0.1·N for biases and the rest,
    N(0, 1) for embeddings), rounded to float16 values when half."""
    with torch.no_grad():
        for key, t in model.state_dict().items():
            noise = torch.randn(t.shape, generator=gen)
            last = key.rsplit(".", 2)[-2]
            if "Norm" in last and key.endswith(".weight"):
                v = 1 + 0.1 * noise
            elif "Encoder" in key and t.dim() == 2 and "Linear" not in key:  # token / position embeddings
                v = noise
            elif t.dim() > 1:
                v = noise / t[0].numel() ** 0.5
            else:
                v = 0.1 * noise
            t.copy_(v.half().float() if half else v)


def state(model, prefix=""):
    return {prefix + k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save_half(path, tensors, metadata=None):
    """Float tensors as float16 (their values are float16-exact here)."""
    out = {}
    for k, v in tensors.items():
        if v.is_floating_point():
            assert torch.equal(v.half().float(), v), k
            v = v.half()
        out[k] = v
    save_file(out, str(path), metadata=metadata)
    return path.stat().st_size


class Models:
    """The base models of a tier and the files they are written to."""

    def __init__(self, full, out):
        gen = torch.Generator().manual_seed(11)
        self.full = full
        if full:
            self.unet = sd1.SD1UNet(in_channels=4)
            self.unet9 = sd1.SD1UNet(in_channels=9)
            from refiners.foundationals.clip.text_encoder import CLIPTextEncoderL

            self.text = CLIPTextEncoderL()
            self.lda = SD1Autoencoder()
            self.overrides = {"unet": {}, "text_encoder": {}, "autoencoder": {}}
        else:
            self.unet = gu.sized_unet(UNET_TINY)
            self.unet9 = gu.sized_unet(dict(UNET_TINY, in_channels=9))
            self.text = tiny_text_encoder()
            self.lda = tiny_autoencoder()
            w = VAE_TINY["widths"]
            self.overrides = {
                "unet": {k: str(v) for k, v in UNET_TINY.items() if k != "in_channels"},
                "text_encoder": {k: str(v) for k, v in TEXT_TINY.items()},
                "autoencoder": {f"channels_{i + 1}": str(c) for i, c in enumerate(w)} | {"num_groups": str(VAE_TINY["groups"])},
            }
        for m in (self.unet, self.unet9, self.text, self.lda):
            randomize(m, gen, half=not full)
            m.eval()
        self.files = {"unet": "unet.safetensors", "unet_inpainting": "unet_inpainting.safetensors",
                      "text_encoder": "text_encoder.safetensors", "autoencoder": "autoencoder.safetensors"}
        save = save_file if full else None
        sizes = {}
        for name, tensors in (("unet", state(self.unet)), ("unet_inpainting", state(self.unet9)),
                              ("text_encoder", state(self.text)), ("autoencoder", state(self.lda))):
            path = out / self.files[name]
            if full:
                save_file(tensors, str(path))
                sizes[name] = path.stat().st_size
            else:
                sizes[name] = save_half(path, tensors)
        print("weights:", {k: f"{v / 1e3:.0f} KB" for k, v in sizes.items()})
        self.lora_file = None

    def add_lora(self, out, gen):
        """A Refiners-format LoRA (LoraAdapter with LinearLora/Conv2dLora on
        every other parent's Linear and Conv2d, both models, rank 2) injected
        into the base models; its file as Refiners' export names it."""
        roots = [self.unet, self.text]
        injected = {}
        for root in roots:
            for parent, layer in gl.refiners_targets(root, subset=True):
                lora = gl.make_lora("style", layer, gen, rank=2)
                lora.scale = 0.8
                gl.attach(lora, layer, parent, injected)
        tensors = gl.export_refiners(roots, "style")
        self.lora_file = "lora.safetensors"
        save_file(tensors, str(out / self.lora_file))
        print(f"lora: {len(tensors)} tensors, {(out / self.lora_file).stat().st_size / 1e3:.0f} KB")

    def add_controlnets(self, out):
        """Two ControlNets for the base U-Net (Refiners' Controlnet at its
        sizes, generate_controlnet.sized_controlnet; a condition encoder of
        4/6/8/8 channels in the tiny tier, Controlnet's own in the full
        one), seeded apart from the base models, saved in Refiners' layout
        (the Controlnet state dict) as controlnet_<name>.safetensors."""
        gen = torch.Generator().manual_seed(17)
        params = UNET_TINY if not self.full else gc.FULL
        cond = gc.TINY_COND if not self.full else gc.FULL_COND
        self.controlnet_params = (params, cond)
        self.controlnets = {}
        for name in ("a", "b"):
            net = gc.sized_controlnet(self.unet, params, cond, name, 1.0).eval()
            randomize(net, gen, half=not self.full)
            self.controlnets[name] = net
            path = out / f"controlnet_{name}.safetensors"
            if self.full:
                save_file(state(net), str(path))
            else:
                save_half(path, state(net))
            print(f"controlnet {name}: {len(net.state_dict())} tensors, {path.stat().st_size / 1e3:.0f} KB")

    def remove_lora(self):
        for root in (self.unet, self.text):
            for adapter in list(root.layers(gl.LoraAdapter)):
                adapter.eject()


def pipeline(models, inpainting, solver, dtype):
    """Refiners' pipeline over (copies of) the models, in dtype."""
    unet = models.unet9 if inpainting else models.unet
    parts = [unet, models.lda, models.text]
    if dtype == torch.float64:
        parts = [golden.float64_twin(p) for p in parts]
    cls = StableDiffusion_1_Inpainting if inpainting else StableDiffusion_1
    return cls(unet=parts[0], lda=parts[1], clip_text_encoder=parts[2], solver=SOLVERS[solver](num_inference_steps=1), dtype=dtype)


def condition_image(images, ctl, w, h):
    """A control's condition as models/sd15/pipeline makes it: the image
    resized as Refiners resizes init images, then, for preprocess canny,
    cv2.Canny on the RGB array (ControlNet's Canny annotator) on three
    channels."""
    img = images[ctl["condition"]].convert("RGB").resize((w, h))
    if ctl.get("preprocess") == "canny":
        edges = cv2.Canny(np.asarray(img), ctl["low"], ctl["high"])
        img = Image.fromarray(np.stack([edges] * 3, -1))
    return img


def controlnet_keep(i, n, start, end):
    """diffusers 0.27.2's controlnet_keep for run step i of n (StableDiffusionControlNetPipeline)."""
    return 1.0 - float(i / n < start or (i + 1) / n > end)


def insert_controlnets(models, sd, req, dtype):
    """SD1ControlnetAdapter for each control of the request, in order, on
    the pipeline's U-Net (fresh Controlnets with the saved weights: the
    store Lambdas close over their Controlnet, so the float64 run needs
    its own), with their conditions set."""
    adapters = []
    params, cond = models.controlnet_params
    w, h = req["width"], req["height"]
    for ctl in req.get("controls", []):
        src = models.controlnets[ctl["net"]]
        net = gc.sized_controlnet(sd.unet, params, cond, ctl["net"], ctl.get("scale", 1.0)).eval()
        net.load_state_dict(src.state_dict())
        net.to(dtype=dtype)
        a = gc.Adapter(sd.unet, net).inject()
        a.set_controlnet_condition(image_to_tensor(condition_image(models.images, ctl, w, h), dtype=dtype))
        adapters.append((a, ctl))
    return adapters


def run(models, req, images, dtype):
    """One generation as Refiners' tests run it; returns the final latents and the image."""
    h, w = req["height"], req["width"]
    inpainting = "mask" in req
    sd = pipeline(models, inpainting, req["solver"], dtype)
    steps, first = req["steps"], req.get("first_step", 0)
    sd.set_inference_steps(steps, first_step=first)
    init = images[req["init_image"]] if "init_image" in req else None
    controls = insert_controlnets(models, sd, req, dtype)
    with torch.no_grad():
        emb = sd.compute_clip_text_embedding(req["prompt"], negative_text=req["negative_prompt"])
        torch.manual_seed(req["seed"])
        noise = torch.randn(1, 4, h // 8, w // 8)
        if dtype == torch.float64:
            noise = golden.upcast(noise)
        if inpainting:
            sd.set_inpainting_conditions(init, images[req["mask"]], latents_size=(h // 8, w // 8))
            if req["strength"] == 1:
                init = None  # pure noise, as Refiners' inpainting tests run
        x = sd.init_latents((h, w), init_image=init, noise=noise)
        for i, step in enumerate(sd.steps):
            # Refiners has no step range: its scale is set per step to
            # scale·keep, as diffusers' cond_scale.
            for a, ctl in controls:
                a.set_scale(ctl.get("scale", 1.0) * controlnet_keep(i, len(sd.steps), ctl.get("start", 0.0), ctl.get("end", 1.0)))
            x = sd(x, step=step, clip_text_embedding=emb, condition_scale=req["guidance"])
        image = sd.lda.latents_to_image(x)
    for a, _ in reversed(controls):
        a.eject()
    return x, image


def first_step(steps, strength):
    """diffusers' rule, as models/sd15.FirstStep."""
    return steps - min(int(steps * strength), steps)


def make_images(out, w, h):
    """An init image at the output size, one of another size (resized by
    PIL's bicubic inside Refiners, by sd15.RGB.Resize on the Go side), and a
    mask with values around the 0.5 threshold."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h) + 64], -1)
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    images = {"init.png": Image.fromarray(img)}
    h2, w2 = h * 5 // 6, w * 7 // 8
    images["init_other_size.png"] = Image.fromarray(np.clip(rng.normal(128, 50, (h2, w2, 3)), 0, 255).astype(np.uint8))
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: 3 * h // 4, w // 3: 5 * w // 6] = 255
    mask[:, :3] = 128  # passes (128/255 > 0.5)
    mask[:3, :] = 127  # does not
    images["mask.png"] = Image.fromarray(mask, mode="L")
    for name, im in images.items():
        im.save(out / name)
    return images


def make_control_images(out, w, h):
    """Condition images: an edge-like map at the output size, and a
    photo-like picture of another size (shapes over a gradient, a little
    noise) for the Canny preprocessor."""
    rng = np.random.default_rng(23)
    yy, xx = np.mgrid[0:h, 0:w]
    edges = np.zeros((h, w, 3), np.uint8)
    edges[(xx % 11 == 0) | (yy % 9 == 0)] = 255
    edges[h // 3: 2 * h // 3, w // 4: w // 4 + 2] = 255
    h2, w2 = h * 3 // 2 + 5, w * 5 // 4 + 3
    yy, xx = np.mgrid[0:h2, 0:w2]
    photo = np.stack([xx * 200 / w2 + 20, yy * 180 / h2 + 30, np.full_like(xx, 90.0)], -1)
    photo[h2 // 4: h2 // 2, w2 // 5: w2 // 2] = (230, 40, 40)
    photo[(yy - 2 * h2 // 3) ** 2 + (xx - 2 * w2 // 3) ** 2 < (h2 // 5) ** 2] = (30, 60, 220)
    photo = np.clip(photo + rng.normal(0, 6, photo.shape), 0, 255).astype(np.uint8)
    images = {"control.png": Image.fromarray(edges), "photo.png": Image.fromarray(photo)}
    for name, im in images.items():
        im.save(out / name)
    return images


def cases(w, h, steps):
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, guidance=7.5, seed=2, width=w, height=h)
    out = {}
    for solver in SOLVERS:
        out[f"txt2img_{solver}"] = dict(base, solver=solver)
        out[f"inpaint_{solver}"] = dict(base, solver=solver, init_image="init.png", mask="mask.png", strength=1.0)
    for solver in ("dpm", "ddim"):  # Refiners' Euler.add_noise fails (fractional timesteps)
        out[f"img2img_{solver}"] = dict(base, solver=solver, init_image="init.png", strength=0.6, seed=7)
    out["img2img_dpm_resized"] = dict(base, solver="dpm", init_image="init_other_size.png", strength=0.5, seed=3)
    out["inpaint_dpm_strength"] = dict(base, solver="dpm", init_image="init.png", mask="mask.png", strength=0.5, seed=4)
    out["txt2img_dpm_long_prompt"] = dict(base, solver="dpm", prompt=LONG, negative_prompt="", guidance=5.0, seed=9)
    out["txt2img_dpm_lora"] = dict(base, solver="dpm", seed=5, adapters=[{"file": "lora.safetensors", "params": {"scale": 0.8}}])
    # ControlNets (files controlnet_<net>.safetensors); scale, start, end
    # as models/sd15/pipeline.Control, canny's thresholds as given.
    out["txt2img_dpm_controlnet"] = dict(base, solver="dpm", seed=6, controls=[
        {"net": "a", "file": "controlnet_a.safetensors", "condition": "control.png", "scale": 0.8}])
    out["txt2img_ddim_controlnets"] = dict(base, solver="ddim", seed=8, controls=[
        {"net": "a", "file": "controlnet_a.safetensors", "condition": "photo.png", "preprocess": "canny", "low": 50, "high": 150},
        {"net": "b", "file": "controlnet_b.safetensors", "condition": "control.png", "scale": 1.3, "end": 0.5}])
    out["img2img_dpm_controlnet"] = dict(base, solver="dpm", init_image="init.png", strength=0.6, seed=10, controls=[
        {"net": "b", "file": "controlnet_b.safetensors", "condition": "control.png", "scale": 0.9, "start": 0.25}])
    for r in out.values():
        if "strength" in r:
            r["first_step"] = first_step(r["steps"], r["strength"])
    return out


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        # Refiners' BPE picks merges from a set: pin the hash seed so that
        # the token ids cannot vary between runs (see README, CLIP tokenizer).
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, PYTHONHASHSEED="0"))
    full = "--full" in sys.argv
    out = HERE / "testdata" / ("full/pipeline" if full else "pipeline")
    out.mkdir(parents=True, exist_ok=True)
    w, h, steps = (512, 512, 10) if full else (64, 48, 8)
    torch.manual_seed(0)
    models = Models(full, out)
    images = make_images(out, w, h)
    images.update(make_control_images(out, w, h))
    models.images = images
    models.add_controlnets(out)
    todo = cases(w, h, steps)
    only = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")]
    if only:  # regenerate some cases only (the shared files are rewritten identically)
        todo = {k: v for k, v in todo.items() if k in only[0].split(",")}
    if full:  # the full tier keeps one case per kind
        todo = {k: v for k, v in todo.items() if k in ("txt2img_dpm", "img2img_dpm", "inpaint_dpm", "txt2img_dpm_lora",
                                                        "txt2img_ddim_controlnets")}
    meta_common = {
        "weights": json.dumps(models.files),
        "overrides": json.dumps(models.overrides),
        "reference": f"torch {torch.__version__}, refiners {gl.REFS['refiners']} StableDiffusion_1 / StableDiffusion_1_Inpainting",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": str(torch.get_num_threads()),
    }
    for name, req in todo.items():
        lora = "adapters" in req
        if lora:
            models.add_lora(out, torch.Generator().manual_seed(13))
        start = time.perf_counter()
        x32, img32 = run(models, req, images, torch.float32)
        took = time.perf_counter() - start
        x64, img64 = run(models, req, images, torch.float64)
        if lora:
            models.remove_lora()
        img32.save(out / f"{name}.png")
        img64.save(out / f"{name}.ref64.png")
        a, b = np.asarray(img32).astype(int), np.asarray(img64).astype(int)
        err = (x32.double() - x64).abs().max().item()
        save_file(golden.reference_tensors([x32], [x64]), str(out / f"{name}.case.safetensors"),
                  metadata=meta_common | golden.reference_error_note([x32], [x64])
                  | {"request": json.dumps(req), "image_ref32_ref64_pixels_off": str(int((a != b).sum()))})
        print(f"{name}: {took:.2f}s, latents {tuple(x32.shape)} |x| max {x32.abs().max():.3g}, "
              f"|ref32 - ref64| {err:.3g}, image pixels off (ref32 vs ref64) {(a != b).sum()} (max {abs(a - b).max()})")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"{out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
