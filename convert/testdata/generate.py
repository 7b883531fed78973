"""Name tables for `refinersd convert` (package convert: data/*.json).

    conformance/.venv/bin/python convert/testdata/generate.py

For each Stable Diffusion 1.5 component, every tensor of the Refiners model
(the state-dict keys the project's specs load) with its name in the
diffusers / transformers layout and in the original single-file layout:

  unet          diffusers UNet2DConditionModel  <->  Refiners SD1UNet
  text_encoder  transformers CLIPTextModel      <->  Refiners CLIPTextEncoderL
                                                     (without its tokenizer)
  autoencoder   diffusers AutoencoderKL         <->  Refiners LatentDiffusionAutoencoder
                                                     (Encoder.*, Decoder.*)
  controlnet    diffusers ControlNetModel       <->  Refiners Controlnet
                                                     (SD1ControlnetAdapter's)

How the pairs are found. Refiners' ModelConverter runs both models on the
same input, pairs their basic layers (Linear, Conv2d, norms, embeddings) in
execution order within groups of equal type and parameter shapes, copies
the weights across and checks the paired models agree layer by layer; a
target key <layer>.<param> then comes from <paired layer>.<param>. The
models are SD 1.5's topology at tiny widths (conformance/convert_models.py:
every block and layer, so every key), with seeded random weights; the
pairing is checked again at full size on the meta device (every source key
exists with the shape of its target) and, for the U-Net and text encoder,
against the LoRA planner's table (plugins/lora/mapping/data/sd15.json),
which ModelConverter paired at full size.

ControlNet: diffusers runs its zero convolutions (controlnet_down_blocks.N)
after all the down blocks, Refiners right after each one, and they share a
shape group with the attention blocks' 1x1 proj_in / proj_out, so execution
order alone mispairs them (Refiners' own conversion script reorders that
group by hand). Here the source order of every group is rewritten so that
the zero convolutions take the places of Refiners' Passthrough.Conv2d
layers, in order, then the residuals the two controlnets produce are
compared (13 down residuals and the middle one).

Original layout: conformance/convert_models.ldm_key, the inverse of
diffusers' own original -> diffusers conversion, proven by a round trip
through that conversion (convert_models.check_ldm_round_trip).
"""

import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from refiners.fluxion.model_converter import ModelConverter

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "conformance"))

import convert_models as cm  # noqa: E402

DATA = HERE.parent / "data"
REFS = {p: version(p) for p in ["torch", "refiners", "diffusers", "transformers"]}

# Keys of an original single-file checkpoint that are not weights of the
# model: the noise schedule LatentDiffusion registers as buffers, and the
# EMA copy of the U-Net (model_ema.<flattened name>, used instead with
# --ema). Old transformers versions also saved the CLIP position ids.
SCHEDULE = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
            "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
            "logvar"]


def pair(source, target, source_args, target_args, skip_output_check=False):
    conv = ModelConverter(source_model=source, target_model=target, threshold=1e-3, verbose=False,
                          skip_output_check=skip_output_check)
    if not conv.run(source_args=source_args, target_args=target_args):
        raise SystemExit(f"ModelConverter could not pair {type(source).__name__} with {type(target).__name__}")
    return conv.get_mapping()


def param_rows(target, source_sd, mapping):
    rows = []
    for key, t in target.state_dict().items():
        prefix, suffix = key.rsplit(".", 1)
        skey = f"{mapping[prefix]}.{suffix}"
        assert skey in source_sd and source_sd[skey].shape == t.shape, key
        assert torch.equal(source_sd[skey], t), f"{key}: not copied from {skey}"
        rows.append({"refiners": key, "diffusers": skey})
    used = {r["diffusers"] for r in rows}
    assert len(used) == len(rows), "a source key is used twice"
    left = set(source_sd) - used
    assert not left, f"source keys without a target: {sorted(left)[:8]}"
    return rows


def add_original(component, rows):
    for r in rows:
        if component in ("unet", "controlnet"):
            r["original"] = cm.unet_ldm_key(r["diffusers"])
        elif component == "autoencoder":
            r["original"], conv = cm.vae_ldm_key(r["diffusers"])
            if conv:
                r["original_conv1x1"] = True  # a 1x1 convolution there: [out, in, 1, 1]
        else:
            r["original"] = r["diffusers"]


def check_full(component, rows, refiners_full, source_full):
    """At full size (meta tensors): every row's source exists with its
    target's shape; rows get the full-size shapes."""
    tsd, ssd = refiners_full.state_dict(), source_full.state_dict()
    assert [r["refiners"] for r in rows] == list(tsd), f"{component}: full-size Refiners keys differ from tiny"
    assert {r["diffusers"] for r in rows} == set(ssd), f"{component}: full-size source keys differ from tiny"
    for r in rows:
        assert tuple(ssd[r["diffusers"]].shape) == tuple(tsd[r["refiners"]].shape), r
        r["shape"] = list(tsd[r["refiners"]].shape)
    if component in ("unet", "controlnet", "autoencoder"):
        ldm = cm.check_ldm_round_trip(component, source_full)
        pre = cm.LDM_PREFIX[component]
        for r in rows:
            want = tuple(r["shape"]) + ((1, 1) if r.get("original_conv1x1") else ())
            assert tuple(ldm[pre + r["original"]].shape) == want, r


def check_lora_table(component, rows):
    """Module pairs agree with the LoRA planner's full-size table."""
    table = json.loads((ROOT / "plugins/lora/mapping/data/sd15.json").read_text())
    ours = {r["refiners"].rsplit(".", 1)[0]: r["diffusers"].rsplit(".", 1)[0] for r in rows}
    n = 0
    for lr in table["layers"]:
        if lr["component"] == component:
            assert ours[lr["refiners"]] == lr["community"], lr
            n += 1
    print(f"  {component}: {n} layers agree with the LoRA table")


def write_table(component, head, rows):
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    lines.append('  "tensors": [')
    for i, r in enumerate(rows):
        lines.append("    " + json.dumps(r) + ("," if i < len(rows) - 1 else ""))
    lines.append("  ]")
    lines.append("}")
    path = DATA / f"sd15_{component}.json"
    path.write_text("\n".join(lines) + "\n")
    print(f"  {path.relative_to(ROOT)}: {len(rows)} tensors")


def param(rows, diffusers_key, dim):
    """A spec parameter read from a dimension of a tensor (by Refiners key)."""
    for r in rows:
        if r["diffusers"] == diffusers_key:
            return {"key": r["refiners"], "dim": dim}
    raise KeyError(diffusers_key)


def doc(component, refiners, source):
    return (f"Stable Diffusion 1.5 {component}: every tensor of Refiners' {refiners} (the keys the specs load) with its "
            f"{source} name and its original single-file name, paired by Refiners' ModelConverter. Generated by "
            "convert/testdata/generate.py; do not edit.")


def main():
    torch.manual_seed(0)
    print("reference:", REFS)
    cm.check_sized()
    gen = torch.Generator().manual_seed(0)
    DATA.mkdir(exist_ok=True)
    up = cm.UNET_TINY

    # --- U-Net ---------------------------------------------------------------
    print("U-Net ...")
    d, r = cm.diffusers_unet(up), cm.refiners_unet(up)
    cm.randomise(d, gen)
    x, t, emb = torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([250]), torch.randn(1, 5, 8, generator=gen)
    hook = r.register_forward_pre_hook(lambda m, a: (m.set_timestep(t), m.set_clip_text_embedding(emb)) and None)
    rows = param_rows(r, d.state_dict(), pair(d, r, (x, t, emb), (x,)))
    hook.remove()
    add_original("unet", rows)
    with torch.device("meta"):
        check_full("unet", rows, cm.refiners_unet(cm.UNET_FULL), cm.diffusers_unet(cm.UNET_FULL))
    check_lora_table("unet", rows)
    write_table("unet", {
        "component": "unet",
        "doc": doc("U-Net", "SD1UNet", "diffusers UNet2DConditionModel"),
        "reference": REFS,
        "refiners_root": "SD1UNet",
        "layouts": [
            {"name": "diffusers", "doc": "diffusers UNet2DConditionModel (unet/diffusion_pytorch_model.*)",
             "prefixes": [""]},
            {"name": "original", "doc": "CompVis LatentDiffusion (single-file checkpoints: model.diffusion_model.*)",
             "prefixes": ["model.diffusion_model.", ""], "ema_prefix": "model_ema.",
             "ignore": SCHEDULE + ["model_ema.*"]},
        ],
        "params": {
            "in_channels": param(rows, "conv_in.weight", 1),
            "out_channels": param(rows, "conv_out.weight", 0),
            "channels_1": param(rows, "conv_in.weight", 0),
            "channels_2": param(rows, "down_blocks.1.resnets.0.conv1.weight", 0),
            "channels_3": param(rows, "down_blocks.2.resnets.0.conv1.weight", 0),
            "sinusoidal_embedding_dim": param(rows, "time_embedding.linear_1.weight", 1),
            "timestep_embedding_dim": param(rows, "time_embedding.linear_1.weight", 0),
            "clip_embedding_dim": param(rows, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", 1),
            "num_heads": {"config": "attention_head_dim", "default": 8},
            "num_groups": {"config": "norm_num_groups", "default": 32},
        },
        "specs": [{"spec": "sd15_unet.yaml", "name": "unet"}],
    }, rows)

    # --- text encoder -----------------------------------------------------------
    print("text encoder ...")
    tp = cm.TEXT_TINY
    d, r = cm.hf_text(tp), cm.refiners_text(tp)
    cm.randomise(d, gen)
    ids = torch.randint(0, tp["vocabulary_size"], (1, tp["max_sequence_length"]), generator=gen)
    rows = param_rows(r, d.state_dict(), pair(d, r, (ids,), (ids,)))
    add_original("text_encoder", rows)
    with torch.device("meta"):
        check_full("text_encoder", rows, cm.refiners_text(cm.TEXT_FULL), cm.hf_text(cm.TEXT_FULL))
    check_lora_table("text_encoder", rows)
    write_table("text_encoder", {
        "component": "text_encoder",
        "doc": doc("text encoder", "CLIPTextEncoderL", "transformers CLIPTextModel"),
        "reference": REFS,
        "refiners_root": "CLIPTextEncoderL",
        "layouts": [
            {"name": "diffusers", "doc": "transformers CLIPTextModel (text_encoder/model.*, pytorch_model.bin)",
             "prefixes": [""], "ignore": ["text_model.embeddings.position_ids"]},
            {"name": "original", "doc": "CompVis FrozenCLIPEmbedder (single-file checkpoints: cond_stage_model.transformer.*)",
             "prefixes": ["cond_stage_model.transformer."],
             "ignore": ["cond_stage_model.transformer.text_model.embeddings.position_ids"]},
        ],
        "params": {
            "embedding_dim": param(rows, "text_model.embeddings.token_embedding.weight", 1),
            "vocabulary_size": param(rows, "text_model.embeddings.token_embedding.weight", 0),
            "max_sequence_length": param(rows, "text_model.embeddings.position_embedding.weight", 0),
            "feedforward_dim": param(rows, "text_model.encoder.layers.0.mlp.fc1.weight", 0),
            "num_attention_heads": {"config": "num_attention_heads", "default": 12},
            "layer_norm_eps": {"config": "layer_norm_eps", "default": 1e-5},
        },
        "specs": [{"spec": "clip_text.yaml", "name": "text_encoder"}],
    }, rows)

    # --- autoencoder --------------------------------------------------------------
    print("autoencoder ...")
    vp = cm.VAE_TINY
    # Refiners' resnets keep GroupNorm's default eps (1e-5), diffusers' use
    # 1e-6: layer by layer the outputs differ by more than the converter's
    # threshold, so the pairing runs on diffusers' model with Refiners' eps.
    d, r = cm.with_refiners_eps(cm.diffusers_vae(vp)), cm.refiners_autoencoder(vp)
    cm.randomise(d, gen)
    img = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    # The converter's layer-by-layer check fails on Refiners' side (its
    # Upsample reads the shapes the Encoder's Downsample stored in the
    # "sampling" context, which the check's second run no longer has), as in
    # Refiners' own conversion script, which skips it: both halves are
    # compared below instead.
    rows = param_rows(r, d.state_dict(), pair(d, r, (img,), (img,), skip_output_check=True))
    with torch.no_grad():
        assert torch.allclose(r[0](img), d.encode(img).latent_dist.mean, atol=1e-5)
        z = torch.randn(1, 4, 4, 4, generator=gen)
        assert torch.allclose(r[1](z), d.decode(z).sample, atol=1e-5)
    add_original("autoencoder", rows)
    with torch.device("meta"):
        check_full("autoencoder", rows, cm.refiners_autoencoder(cm.VAE_FULL), cm.diffusers_vae(cm.VAE_FULL))
    write_table("autoencoder", {
        "component": "autoencoder",
        "doc": doc("autoencoder", "LatentDiffusionAutoencoder", "diffusers AutoencoderKL"),
        "reference": REFS,
        "refiners_root": "LatentDiffusionAutoencoder",
        "layouts": [
            {"name": "diffusers", "doc": "diffusers AutoencoderKL (vae/diffusion_pytorch_model.*)", "prefixes": [""]},
            {"name": "original", "doc": "CompVis AutoencoderKL (single-file checkpoints: first_stage_model.*; "
                                        "standalone VAE files without the prefix); attention projections are 1x1 "
                                        "convolutions", "prefixes": ["first_stage_model.", ""], "ignore": ["model_ema.*"]},
        ],
        "params": {
            "channels_1": param(rows, "encoder.conv_in.weight", 0),
            "channels_2": param(rows, "encoder.down_blocks.1.resnets.0.conv1.weight", 0),
            "channels_3": param(rows, "encoder.down_blocks.2.resnets.0.conv1.weight", 0),
            "channels_4": param(rows, "encoder.down_blocks.3.resnets.0.conv1.weight", 0),
            "num_groups": {"config": "norm_num_groups", "default": 32},
        },
        "specs": [{"spec": "sd15_vae_encoder.yaml", "prefix": "Encoder.", "name": "vae_encoder"},
                  {"spec": "sd15_vae_decoder.yaml", "prefix": "Decoder.", "name": "vae_decoder"}],
    }, rows)

    # --- ControlNet -----------------------------------------------------------------
    print("ControlNet ...")
    d = cm.diffusers_controlnet(up, cm.COND_TINY)
    cm.randomise(d, gen)
    cond = torch.randn(1, 3, 64, 64, generator=gen)
    r, mapping, diff = cm.refiners_controlnet_from(d, up, cm.COND_TINY, x, t, emb, cond)
    rows = param_rows(r, d.state_dict(), mapping)
    print(f"  13 residuals agree (max abs {diff:.2g})")
    add_original("controlnet", rows)
    with torch.device("meta"):
        check_full("controlnet", rows, cm.sized_controlnet(cm.UNET_FULL, cm.COND_FULL),
                   cm.diffusers_controlnet(cm.UNET_FULL, cm.COND_FULL))
    write_table("controlnet", {
        "component": "controlnet",
        "doc": doc("ControlNet", "Controlnet (SD1ControlnetAdapter)", "diffusers ControlNetModel"),
        "reference": REFS,
        "refiners_root": "Controlnet",
        "layouts": [
            {"name": "diffusers", "doc": "diffusers ControlNetModel (diffusion_pytorch_model.*)", "prefixes": [""]},
            {"name": "original", "doc": "lllyasviel ControlNet (control_model.*, or no prefix as in the 1.1 .pth files)",
             "prefixes": ["control_model.", ""]},
        ],
        "params": {
            "in_channels": param(rows, "conv_in.weight", 1),
            "channels_1": param(rows, "conv_in.weight", 0),
            "channels_2": param(rows, "down_blocks.1.resnets.0.conv1.weight", 0),
            "channels_3": param(rows, "down_blocks.2.resnets.0.conv1.weight", 0),
            "sinusoidal_embedding_dim": param(rows, "time_embedding.linear_1.weight", 1),
            "timestep_embedding_dim": param(rows, "time_embedding.linear_1.weight", 0),
            "clip_embedding_dim": param(rows, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", 1),
            "num_heads": {"config": "attention_head_dim", "default": 8},
            "num_groups": {"config": "norm_num_groups", "default": 32},
            "condition_channels_1": param(rows, "controlnet_cond_embedding.conv_in.weight", 0),
            "condition_channels_2": param(rows, "controlnet_cond_embedding.blocks.1.weight", 0),
            "condition_channels_3": param(rows, "controlnet_cond_embedding.blocks.3.weight", 0),
            "condition_channels_4": param(rows, "controlnet_cond_embedding.blocks.5.weight", 0),
        },
        "specs": [{"spec": "sd15_controlnet.yaml", "name": "controlnet"}],
    }, rows)


if __name__ == "__main__":
    main()
