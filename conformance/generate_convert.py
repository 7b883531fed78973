"""Conversion cases for `refinersd convert` (conformance/convert_test.go).

    conformance/.venv/bin/python conformance/generate_convert.py [--full]

Sources. Random-weight diffusers / transformers models of Stable Diffusion
1.5's topology (conformance/convert_models.py: tiny widths, every block),
saved the ways users get them (weights rounded to values the files' dtype
holds exactly, so every file of a model holds the same weights):

  pipeline/              a diffusers pipeline folder: model_index.json (as
                         StableDiffusionPipeline.save_pretrained writes it),
                         unet/ and vae/ by save_pretrained (safetensors),
                         text_encoder/ by save_pretrained with
                         safe_serialization=False (pytorch_model.bin: a
                         torch pickle)
  sd15.safetensors       the original single-file layout (CompVis names,
                         convert_models.ldm_state_dict, checked against
                         diffusers' own conversion): model.diffusion_model.*,
                         cond_stage_model.transformer.*, first_stage_model.*,
                         the noise schedule buffers
  sd15.ckpt              the same in float16 as a Lightning checkpoint (torch.save of
                         {"state_dict": ..., "global_step", "epoch", a
                         ModelCheckpoint callback}) whose state dict also
                         holds an EMA copy of the U-Net (model_ema.*, other
                         random values, LitEma's flattened names)
  inpainting_unet/       a diffusers U-Net folder with in_channels=9, in bfloat16
  controlnet/            a diffusers ControlNetModel folder
  control_sd15.pth       the same ControlNet in the original layout without
                         prefix (as lllyasviel's ControlNet 1.1 .pth files)

Cases (<name>.case.safetensors): inputs (spec inputs: input.N and
context.<name>.<key>), output.0 = the diffusers / transformers model's output
in float32, ref64.0 = the same computation in float64 (the module
deep-copied and .to(torch.float64), floating inputs upcast, integer inputs
unchanged); metadata: the spec, its key prefix, the spec parameters the
converter must infer ("params"), the sources to convert (JSON list of
{"path", "component", "ema"}), the reference.

  unet            diffusers UNet2DConditionModel(sample, t, emb).sample
  unet_ema        the same with the EMA weights (sd15.ckpt --ema)
  unet_inpainting in_channels=9
  text_encoder    transformers CLIPTextModel(ids).last_hidden_state
  vae_encoder     AutoencoderKL.encode(x).latent_dist.mean
  vae_decoder     AutoencoderKL.decode(z).sample
    The autoencoder's reference runs with its resnets' GroupNorm eps at
    1e-5, the architecture of Refiners' (and the specs') Resnet: diffusers
    uses 1e-6. The difference that makes on the unmodified model is stored
    as diffusers_eps_max_abs.

ControlNet has no spec yet: controlnet_refiners.safetensors is the state
dict Refiners' own conversion gives (ModelConverter, convert_models.
refiners_controlnet_from: the 13 residuals agree with diffusers'); the
converted files must equal it key for key, bit for bit.

Full (--full, testdata/full/convert, not committed): the same at SD 1.5's
real sizes (about 4 GB of sources).

Benchmark (--bench): only a full-size single-file checkpoint,
testdata/full/convert/sd15_bench.safetensors and .ckpt (random weights,
float32, 4.3 GB each), for `make bench-convert`.
"""

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import save_file

import convert_models as cm
from golden import float64_twin, reference_error_note, reference_tensors, upcast

HERE = Path(__file__).resolve().parent
REFS = {p: version(p) for p in ["torch", "refiners", "diffusers", "transformers"]}


def ref_line(lib):
    return f"torch {REFS['torch']}, {lib} {REFS[lib]}"


def float64_run(fn, module, *inputs):
    """fn(module, *inputs) in float32, and the same on the module's float64
    twin (golden.float64_twin, inputs through golden.upcast). The default
    dtype is float64 during the second run: transformers' CLIP builds its
    causal mask with torch.full in the default dtype, from the float64
    minimum."""
    with torch.no_grad():
        y32 = fn(module, *inputs)
        twin = float64_twin(module)
        torch.set_default_dtype(torch.float64)
        try:
            y64 = fn(twin, *upcast(list(inputs)))
        finally:
            torch.set_default_dtype(torch.float32)
    return y32, y64


def save_case(out, name, *, spec, prefix="", params, sources, inputs, y32, y64, reference, extra=None):
    tensors = {k: v.contiguous() for k, v in inputs.items()}
    tensors.update(reference_tensors([y32], [y64]))
    meta = {
        "spec": spec,
        "prefix": prefix,
        "params": json.dumps({k: str(v) for k, v in params.items()}),
        "sources": json.dumps(sources),
        "dtype": "float32",
        "reference": reference,
        **reference_error_note([y32], [y64]),
    }
    meta.update(extra or {})
    save_file(tensors, str(out / f"{name}.case.safetensors"), metadata=meta)
    print(f"  {name}: output {tuple(y32.shape)}, max |ref32 - ref64| {meta['ref_err.0']}")


def unet_params(p, in_channels=4):
    return dict(p, in_channels=in_channels)


def text_params(p):
    return {k: v for k, v in p.items() if k != "num_layers"} | {"layer_norm_eps": "1e-05"}


def vae_params(p):
    return {f"channels_{i + 1}": w for i, w in enumerate(p["widths"])} | {"num_groups": p["groups"]}


def model_index():
    # What StableDiffusionPipeline.save_pretrained writes (diffusers 0.27).
    return {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": REFS["diffusers"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"], "image_encoder": [None, None],
        "requires_safety_checker": True, "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


class ModelCheckpoint:
    """Stands for Lightning's callback, which real SD .ckpt files hold
    (pickled by reference to its class; Lightning is not installed)."""

    def __init__(self):
        self.monitor, self.save_top_k = "val/loss", 3


ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
for _name in ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]:
    sys.modules.setdefault(_name, type(sys)(_name))
sys.modules["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint = ModelCheckpoint


def main(full):
    """Models are made, saved, run and dropped one after the other, so that
    the full tier holds at most the three pipeline models plus one float64
    copy (about 11 GB)."""
    tier = "full" if full else "tiny"
    out = HERE / "testdata" / ("full/convert" if full else "convert")
    out.mkdir(parents=True, exist_ok=True)
    up = cm.UNET_FULL if full else cm.UNET_TINY
    tp = cm.TEXT_FULL if full else cm.TEXT_TINY
    vp = cm.VAE_FULL if full else cm.VAE_TINY
    cond_ch = cm.COND_FULL if full else cm.COND_TINY
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    t0 = time.perf_counter()

    # Inputs.
    shape = (1, 4, 64, 64) if full else (2, 4, 8, 8)
    x = torch.randn(shape, generator=gen)
    x9 = torch.randn((shape[0], 9) + shape[2:], generator=gen)
    emb = torch.randn(shape[0], 77 if full else 5, up["clip_embedding_dim"], generator=gen)
    t = torch.tensor([999 if full else 250], dtype=torch.int64)
    unet_inputs = {"input.0": x, "context.diffusion.timestep": t,
                   "context.cross_attention_block.clip_text_embedding": emb}
    ids = torch.randint(0, tp["vocabulary_size"], (2, tp["max_sequence_length"]), generator=gen)
    img_shape = (1, 3, 512, 512) if full else (2, 3, 32, 32)
    img = torch.rand(img_shape, generator=gen) * 2 - 1
    z = torch.randn(img_shape[0], 4, img_shape[2] // 8, img_shape[3] // 8, generator=gen)
    cond = torch.randn(1, 3, shape[2] * 8, shape[3] * 8, generator=gen)

    # Weights float16 holds exactly: sd15.ckpt is saved in float16 (as
    # pruned checkpoints often are), the other files in float32, and all
    # must give the same model.
    def make(model, dtype=torch.float16):
        cm.randomise(model, gen)
        return cm.round_to(model, dtype)

    unet, text, vae = make(cm.diffusers_unet(up)), make(cm.hf_text(tp)), make(cm.diffusers_vae(vp))
    ema_model = make(cm.diffusers_unet(up))
    ema_half = {k: v.half() for k, v in ema_model.state_dict().items()}
    del ema_model

    # --- sources -------------------------------------------------------------
    print(f"[{tier}] writing sources ...")
    pipe = out / "pipeline"
    unet.save_pretrained(pipe / "unet", safe_serialization=True)
    vae.save_pretrained(pipe / "vae", safe_serialization=True)
    text.save_pretrained(pipe / "text_encoder", safe_serialization=False)
    (pipe / "model_index.json").write_text(json.dumps(model_index(), indent=2) + "\n")

    single = {}
    for comp, m in (("unet", unet), ("text_encoder", text), ("autoencoder", vae)):
        single.update(cm.check_ldm_round_trip(comp, m))
    schedule = {k: torch.linspace(0.1, 0.9, 1000, dtype=torch.float32) for k in (
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")}
    single |= schedule
    write_safetensors(out / "sd15.safetensors", single, {"format": "pt"})

    half = {k: v.half() for k, v in single.items()}
    del single
    for k, v in cm.ldm_state_dict("unet", ema_half).items():
        half["model_ema." + "".join(k.split(".")[1:])] = v  # LitEma's names
    half["model_ema.decay"] = torch.tensor(0.9999)
    half["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    # Older transformers versions saved the position ids.
    half["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(tp["max_sequence_length"])[None]
    torch.save({"state_dict": half, "global_step": 1234, "epoch": 5, "pytorch-lightning_version": "1.4.2",
                "callbacks": {ModelCheckpoint: ModelCheckpoint()}}, out / "sd15.ckpt")
    del half

    # --- references ------------------------------------------------------------
    print(f"[{tier}] references ...")

    def run_unet(m, x, t, emb):
        return m(x, t, emb).sample

    def three(comp, **kw):
        return [dict(path=p, component=comp, **kw) for p in ("pipeline", "sd15.safetensors", "sd15.ckpt")]

    y32, y64 = float64_run(lambda m, ids: m(ids).last_hidden_state, text, ids)
    save_case(out, "text_encoder", spec="specs/clip_text.yaml", params=text_params(tp), sources=three("text_encoder"),
              inputs={"input.0": ids}, y32=y32, y64=y64, reference=ref_line("transformers") + " CLIPTextModel")
    del text

    with torch.no_grad():
        plain_enc, plain_dec = vae.encode(img).latent_dist.mean, vae.decode(z).sample
    vae = cm.with_refiners_eps(vae)
    enc32, enc64 = float64_run(lambda m, x: m.encode(x).latent_dist.mean, vae, img)
    dec32, dec64 = float64_run(lambda m, z: m.decode(z).sample, vae, z)
    del vae
    note = "diffusers AutoencoderKL with its resnets' GroupNorm eps at 1e-5 (Refiners' Resnet; diffusers: 1e-6)"
    save_case(out, "vae_encoder", spec="specs/sd15_vae_encoder.yaml", prefix="Encoder.", params=vae_params(vp),
              sources=three("autoencoder"), inputs={"input.0": img}, y32=enc32, y64=enc64,
              reference=ref_line("diffusers") + " " + note + ": encode().latent_dist.mean",
              extra={"diffusers_eps_max_abs": f"{(plain_enc - enc32).abs().max().item():.3g}"})
    save_case(out, "vae_decoder", spec="specs/sd15_vae_decoder.yaml", prefix="Decoder.", params=vae_params(vp),
              sources=three("autoencoder"), inputs={"input.0": z}, y32=dec32, y64=dec64,
              reference=ref_line("diffusers") + " " + note + ": decode().sample",
              extra={"diffusers_eps_max_abs": f"{(plain_dec - dec32).abs().max().item():.3g}"})

    y32, y64 = float64_run(run_unet, unet, x, t, emb)
    save_case(out, "unet", spec="specs/sd15_unet.yaml", params=unet_params(up), sources=three("unet"),
              inputs=unet_inputs, y32=y32, y64=y64, reference=ref_line("diffusers") + " UNet2DConditionModel")
    unet.load_state_dict({k: v.float() for k, v in ema_half.items()})  # float16 -> float32 is exact
    del ema_half
    y32, y64 = float64_run(run_unet, unet, x, t, emb)
    save_case(out, "unet_ema", spec="specs/sd15_unet.yaml", params=unet_params(up),
              sources=[dict(path="sd15.ckpt", component="unet", ema=True)], inputs=unet_inputs, y32=y32, y64=y64,
              reference=ref_line("diffusers") + " UNet2DConditionModel (the EMA weights)")
    del unet

    # bfloat16 weights, saved as such (save_pretrained keeps the dtype).
    unet9 = make(cm.diffusers_unet(up, in_channels=9), torch.bfloat16)
    unet9.to(torch.bfloat16).save_pretrained(out / "inpainting_unet", safe_serialization=True)
    unet9.to(torch.float32)
    y32, y64 = float64_run(run_unet, unet9, x9, t, emb)
    save_case(out, "unet_inpainting", spec="specs/sd15_unet.yaml", params=unet_params(up, 9),
              sources=[dict(path="inpainting_unet", component="unet")], inputs=unet_inputs | {"input.0": x9},
              y32=y32, y64=y64, reference=ref_line("diffusers") + " UNet2DConditionModel(in_channels=9)")
    del unet9

    # ControlNet: no spec yet; Refiners' own conversion is the reference.
    cn = cm.diffusers_controlnet(up, cond_ch)
    cm.randomise(cn, gen)
    cn.save_pretrained(out / "controlnet", safe_serialization=True)
    cm.check_ldm_round_trip("controlnet", cn)
    torch.save(cm.ldm_state_dict("controlnet", cn.state_dict(), prefix=False), out / "control_sd15.pth")
    r, _, diff = cm.refiners_controlnet_from(cn, up, cond_ch, x[:1], t, emb[:1], cond)
    write_safetensors(out / "controlnet_refiners.safetensors", r.state_dict(),
                      {"reference": ref_line("refiners") + " Controlnet via ModelConverter (13 residuals within "
                                                           f"{diff:.2g} of diffusers')",
                       "sources": json.dumps([dict(path="controlnet", component="controlnet"),
                                              dict(path="control_sd15.pth", component="controlnet")])})
    print(f"  controlnet_refiners: {len(r.state_dict())} tensors (residuals within {diff:.2g} of diffusers')")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"[{tier}] {size / 1e6:.1f} MB in {out.relative_to(HERE.parent)}, {time.perf_counter() - t0:.0f} s")


def write_safetensors(path, tensors, metadata=None):
    """safetensors' layout written one tensor at a time (save_file copies
    every tensor to bytes first: twice the checkpoint in memory)."""
    header, offset = {}, 0
    dtypes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
    for k, v in tensors.items():
        n = v.numel() * v.element_size()
        header[k] = {"dtype": dtypes[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for v in tensors.values():
            f.write(v.contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")


def bench_checkpoint(out):
    """A full-size SD 1.5 single-file checkpoint (original layout, float32,
    random weights) for `make bench-convert`: sd15_bench.safetensors and the
    same as a Lightning .ckpt."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    sd = {}
    for comp, m in (("unet", cm.diffusers_unet(cm.UNET_FULL)), ("text_encoder", cm.hf_text(cm.TEXT_FULL)),
                    ("autoencoder", cm.diffusers_vae(cm.VAE_FULL))):
        with torch.no_grad():
            for prm in m.parameters():
                prm.normal_(0, 0.02)
        sd.update(cm.ldm_state_dict(comp, m.state_dict()))
        del m
    sd |= {k: torch.zeros(1000) for k in ("betas", "alphas_cumprod", "alphas_cumprod_prev")}
    t0 = time.perf_counter()
    write_safetensors(out / "sd15_bench.safetensors", sd, {"format": "pt"})
    torch.save({"state_dict": sd, "global_step": 840000}, out / "sd15_bench.ckpt")
    n = sum(v.numel() for v in sd.values())
    print(f"sd15_bench: {len(sd)} tensors, {n / 1e6:.0f}M values, written in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    if "--bench" in sys.argv:
        bench_checkpoint(HERE / "testdata" / "full" / "convert")
    else:
        main("--full" in sys.argv)
