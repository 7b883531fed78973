"""The models behind `refinersd convert`: diffusers / transformers models of
Stable Diffusion 1.5's topology at any width, their Refiners twins, and the
original (CompVis / single-file) layout of their state dicts.

Used by convert/testdata/generate.py (the name tables) and
conformance/generate_convert.py (the conversion cases).

The original layout. diffusers ships only the original -> diffusers
direction (diffusers.pipelines.stable_diffusion.convert_from_ckpt:
convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, the ControlNet
variant of the former, and the plain prefix of convert_ldm_clip_checkpoint);
its diffusers -> original script is not in the wheel. `ldm_key` below is the
inverse, written here from reading that code, and `check_ldm_round_trip`
proves it: the original-layout state dict it makes, fed to diffusers' own
conversion functions, gives back the diffusers state dict exactly (every
key, every value), so the files written in this layout are what diffusers
(and so A1111, ComfyUI, sd.cpp) load as SD 1.5 single-file checkpoints.
"""

import copy
import re

import refiners.fluxion.layers as fl
import torch
from refiners.fluxion.model_converter import ModelConverter
from refiners.foundationals.clip import text_encoder as clip
from refiners.foundationals.clip.text_encoder import CLIPTextEncoder
from refiners.foundationals.latent_diffusion.auto_encoder import LatentDiffusionAutoencoder
from refiners.foundationals.latent_diffusion.range_adapter import RangeAdapter2d, RangeEncoder
from refiners.foundationals.latent_diffusion.stable_diffusion_1 import controlnet as sd1cn
from refiners.foundationals.latent_diffusion.stable_diffusion_1 import unet as sd1
from refiners.foundationals.latent_diffusion.unet import ResidualBlock

import generate_sd15_unet as gu
import generate_sd15_vae as gv
from generate_clip_text import without_tokenizer
from golden import tree_print

# --- sizes --------------------------------------------------------------------

UNET_FULL = gu.FULL
# The LoRA cases' tiny U-Net: SD 1.5's every block at widths 4/8/12 (diffusers
# ties the sinusoidal width to the first level and the timestep width to 4x).
UNET_TINY = dict(gu.TINY, sinusoidal_embedding_dim=4, timestep_embedding_dim=16)
TEXT_FULL = dict(embedding_dim=768, max_sequence_length=77, vocabulary_size=49408, num_layers=12,
                 num_attention_heads=12, feedforward_dim=3072)
# CLIP-L's 12 layers (the name table lists them all) at width 8.
TEXT_TINY = dict(embedding_dim=8, max_sequence_length=16, vocabulary_size=100, num_layers=12,
                 num_attention_heads=2, feedforward_dim=16)
VAE_FULL = dict(widths=[128, 256, 512, 512], groups=32)
# SD 1.5's pattern of widths (a shortcut where the width changes).
VAE_TINY = dict(widths=[4, 8, 12, 12], groups=2)
COND_FULL = (16, 32, 96, 256)  # ControlNet's condition encoder (hard-coded in both libraries)
COND_TINY = (4, 4, 8, 8)


# --- diffusers / transformers models -------------------------------------------


def diffusers_unet(p, in_channels=4):
    from diffusers import UNet2DConditionModel

    c1, c2, c3 = p["channels_1"], p["channels_2"], p["channels_3"]
    assert p["sinusoidal_embedding_dim"] == c1 and p["timestep_embedding_dim"] == 4 * c1
    # Stable Diffusion 1.5's unet/config.json but for the sizes
    # ("attention_head_dim" is diffusers' legacy name for the head count).
    return UNet2DConditionModel(
        sample_size=64, in_channels=in_channels, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(c1, c2, c3, c3), layers_per_block=2, cross_attention_dim=p["clip_embedding_dim"],
        attention_head_dim=p["num_heads"], norm_num_groups=p["num_groups"],
    ).eval()


def diffusers_controlnet(p, cond):
    from diffusers import ControlNetModel

    c1, c2, c3 = p["channels_1"], p["channels_2"], p["channels_3"]
    # lllyasviel/sd-controlnet-*'s config.json but for the sizes.
    return ControlNetModel(
        in_channels=4, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "DownBlock2D"),
        block_out_channels=(c1, c2, c3, c3), layers_per_block=2, cross_attention_dim=p["clip_embedding_dim"],
        attention_head_dim=p["num_heads"], norm_num_groups=p["num_groups"],
        conditioning_embedding_out_channels=cond,
    ).eval()


def hf_text(p):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=p["vocabulary_size"], hidden_size=p["embedding_dim"], intermediate_size=p["feedforward_dim"],
        num_hidden_layers=p["num_layers"], num_attention_heads=p["num_attention_heads"],
        max_position_embeddings=p["max_sequence_length"], hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    return CLIPTextModel(cfg).eval()


def diffusers_vae(p):
    from diffusers import AutoencoderKL

    w = p["widths"]
    # Stable Diffusion 1.5's vae/config.json but for the sizes.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(w), layers_per_block=2, norm_num_groups=p["groups"], sample_size=512,
    ).eval()


def with_refiners_eps(vae):
    """The AutoencoderKL with its resnets' GroupNorm eps at 1e-5, as
    Refiners' Resnet has it (diffusers uses 1e-6; the attention and output
    norms are 1e-6 in both): the architecture the specs implement, so that
    diffusers' own forward on the same weights is the reference."""
    from diffusers.models.resnet import ResnetBlock2D

    for m in vae.modules():
        if isinstance(m, ResnetBlock2D):
            m.norm1.eps = m.norm2.eps = 1e-5
    return vae


# --- Refiners models ---------------------------------------------------------------


def refiners_unet(p, in_channels=4):
    return gu.sized_unet(dict(p, in_channels=in_channels)).eval()


def refiners_text(p):
    # Named CLIPTextEncoderL, as the full model (no key carries the name).
    class CLIPTextEncoderL(CLIPTextEncoder):
        def __init__(self):
            super().__init__(**p, use_quick_gelu=True)

    if p == TEXT_FULL:
        return without_tokenizer(clip.CLIPTextEncoderL()).eval()
    return without_tokenizer(CLIPTextEncoderL()).eval()


def refiners_autoencoder(p):
    """LatentDiffusionAutoencoder (keys Encoder.*, Decoder.*) at the given widths."""
    if p == VAE_FULL:
        return LatentDiffusionAutoencoder().eval()
    ae = LatentDiffusionAutoencoder.__new__(LatentDiffusionAutoencoder)
    fl.Chain.__init__(ae, gv.encoder(p["widths"], p["groups"]), gv.decoder(p["widths"], p["groups"]))
    return ae.eval()


def sized_controlnet(p, cond, name="cn", contexts=None):
    """Refiners' Controlnet (stable_diffusion_1/controlnet.py) with every
    size a parameter, built the way Controlnet.__init__ builds it; at the
    real sizes it is checked to be Controlnet itself (check_sized).
    contexts, when given, makes it a root that provides the contexts the
    SD1UNet around it would (a function returning them, as init_context)."""
    c1 = p["channels_1"]
    unet = gu.sized_unet(p)  # its classes, sized
    DownBlocks = type(unet.layer("DownBlocks", fl.Chain))
    MiddleBlock = type(unet.layer(("Sum", "MiddleBlock"), fl.Chain))

    class TimestepEncoder(fl.Passthrough):
        def __init__(self, context_key):
            super().__init__(
                fl.UseContext("diffusion", "timestep"),
                RangeEncoder(p["sinusoidal_embedding_dim"], p["timestep_embedding_dim"]),
                fl.SetContext("range_adapter", context_key),
            )

    class ConditionEncoder(fl.Chain):
        def __init__(self):
            self.out_channels = cond
            super().__init__(
                fl.Chain(fl.Conv2d(3, cond[0], kernel_size=3, stride=1, padding=1), fl.SiLU()),
                *(fl.Chain(fl.Conv2d(cond[i], cond[i], kernel_size=3, padding=1), fl.SiLU(),
                           fl.Conv2d(cond[i], cond[i + 1], kernel_size=3, stride=2, padding=1), fl.SiLU())
                  for i in range(len(cond) - 1)),
                fl.Conv2d(cond[-1], c1, kernel_size=3, padding=1),
            )

    class Controlnet(sd1cn.Controlnet):
        def __init__(self, name):
            self.name, self.scale = name, 1.0
            fl.Passthrough.__init__(
                self, TimestepEncoder(f"timestep_embedding_{name}"), fl.Slicing(dim=1, end=4),
                DownBlocks(in_channels=4), MiddleBlock(),
            )
            self.layer(("DownBlocks", 0), fl.Chain).append(
                fl.Residual(fl.UseContext("controlnet", f"condition_{name}"), ConditionEncoder()))
            for rb in self.layers(ResidualBlock):
                chain = rb.layer("Chain", fl.Chain)
                RangeAdapter2d(target=chain.layer("Conv2d_1", fl.Conv2d), channels=rb.out_channels,
                               embedding_dim=p["timestep_embedding_dim"],
                               context_key=f"timestep_embedding_{name}").inject(chain)
            for n, block in enumerate(self.layer("DownBlocks", fl.Chain)):
                c = block[0].out_channels
                block.append(fl.Passthrough(fl.Conv2d(c, c, kernel_size=1), fl.Lambda(self._store_nth_residual(n))))
            c3 = p["channels_3"]
            self.layer("MiddleBlock", fl.Chain).append(
                fl.Passthrough(fl.Conv2d(c3, c3, kernel_size=1), fl.Lambda(self._store_nth_residual(12))))

        def init_context(self):
            return contexts() if contexts else super().init_context()

    return Controlnet(name).eval()


def check_sized():
    """The sized builders at the real sizes are Refiners' own classes."""
    with torch.device("meta"):
        pairs = [
            ("Controlnet", sized_controlnet(UNET_FULL, COND_FULL), sd1cn.Controlnet(name="cn")),
            ("SD1UNet(9)", refiners_unet(UNET_FULL, 9), sd1.SD1UNet(in_channels=9)),
        ]
    for what, mine, theirs in pairs:
        a = {k: tuple(v.shape) for k, v in mine.state_dict().items()}
        b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        assert list(a.items()) == list(b.items()), f"{what}: state dicts differ"
        assert tree_print(mine) == tree_print(theirs), f"{what}: tree prints differ"


def refiners_controlnet_from(d, p, cond_channels, x, t, emb, cond):
    """Refiners' Controlnet with the weights of diffusers' ControlNetModel d:
    (model, mapping target layer -> source layer, max abs difference of the
    13 residuals the two produce on the given inputs).

    ModelConverter pairs layers by execution order within groups of equal
    type and shapes. diffusers runs its zero convolutions
    (controlnet_down_blocks.N) after all the down blocks, Refiners right
    after each, and they share a group with the attention blocks' 1x1
    proj_in / proj_out: in every group the source order is rewritten so that
    the zero convolutions take the places of Refiners' Passthrough.Conv2d
    layers, in order (what Refiners' own conversion script does by hand),
    then the weights are copied and the residuals compared."""
    residuals = [0.0] * 13

    def contexts():  # what SD1UNet and the adapter provide around a Controlnet
        return {"unet": {"residuals": residuals}, "diffusion": {"timestep": t},
                "cross_attention_block": {"clip_text_embedding": emb}, "controlnet": {"condition_cn": cond},
                "range_adapter": {"timestep_embedding_cn": None}, "sampling": {"shapes": []}}

    def fresh(m, a):
        residuals[:] = [0.0] * 13

    r = sized_controlnet(p, cond_channels, contexts=contexts)
    hook = r.register_forward_pre_hook(fresh)
    conv = ModelConverter(source_model=d, target_model=r, verbose=False)
    src = conv._trace_module_execution_order(module=d, args=(x, t, emb, cond), keys_to_skip=[])
    tgt = conv._trace_module_execution_order(module=r, args=(x,), keys_to_skip=[])
    assert set(src) == set(tgt) and all(len(src[k]) == len(tgt[k]) for k in src), "layer groups differ"
    mapping = {}
    for group, tkeys in tgt.items():
        zero = [k for k in src[group] if k.startswith("controlnet_down_blocks.") or k == "controlnet_mid_block"]
        rest = [k for k in src[group] if k not in zero]
        fixed = [zero.pop(0) if ".Passthrough.Conv2d" in tk else rest.pop(0) for tk in tkeys]
        assert not zero and not rest
        mapping.update(zip(tkeys, fixed))
    r.load_state_dict(ModelConverter._convert_state_dict(d.state_dict(), r.state_dict(), mapping))
    with torch.no_grad():
        down, mid = d(x, t, emb, cond, return_dict=False)
        r(x)
    hook.remove()
    want = list(down) + [mid]
    diff = max((g - w).abs().max().item() for g, w in zip(residuals, want))
    assert diff <= 1e-5, f"residuals differ by {diff}"
    return r, mapping, diff


# --- random values ------------------------------------------------------------------


def randomise(model, gen):
    """Seeded values for every parameter, norms included, keeping
    activations O(1): 1/sqrt(fan_in) for matrices and kernels, N(0, 1) for
    embeddings, 1 + 0.1·N for norm scales, 0.1·N for biases and shifts.
    (ControlNet's zero convolutions get random values too: zeros would hide
    a mix-up.)"""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for _, m in model.named_modules():
            for pname, prm in m.named_parameters(recurse=False):
                if isinstance(m, norms):
                    prm.copy_((1.0 if pname == "weight" else 0.0) + 0.1 * torch.randn(prm.shape, generator=gen))
                elif isinstance(m, torch.nn.Embedding):
                    prm.copy_(torch.randn(prm.shape, generator=gen))
                elif prm.dim() > 1:
                    prm.copy_(torch.randn(prm.shape, generator=gen) / prm[0].numel() ** 0.5)
                else:
                    prm.copy_(0.1 * torch.randn(prm.shape, generator=gen))


def round_to(model, dtype):
    """Rounds every parameter to a value dtype holds exactly, so that files
    saved in dtype and in float32 hold the same weights."""
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(prm.to(dtype).to(prm.dtype))
    return model


# --- the original layout ---------------------------------------------------------

# The U-Net's original names are numbered blocks: input_blocks.N (conv_in,
# then per level layers_per_block resnet[+attention] blocks and a
# downsampler), middle_block.0-2, output_blocks.N (per level
# layers_per_block + 1 resnet[+attention] blocks, the last with the
# upsampler), out.0 / out.2.
RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
VAE_RESNET = [("conv_shortcut", "nin_shortcut")]
VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]
LPB = 2  # layers_per_block


def _rename(rest, table):
    for new, old in table:
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_ldm_key(k, up_attn=(False, True, True, True)):
    """diffusers UNet2DConditionModel / ControlNetModel key -> original key
    (without the model.diffusion_model. / control_model. prefix)."""
    n = LPB + 1
    rules = [
        (r"time_embedding\.linear_1\.(.*)", lambda m: f"time_embed.0.{m[1]}"),
        (r"time_embedding\.linear_2\.(.*)", lambda m: f"time_embed.2.{m[1]}"),
        (r"conv_in\.(.*)", lambda m: f"input_blocks.0.0.{m[1]}"),
        (r"conv_norm_out\.(.*)", lambda m: f"out.0.{m[1]}"),
        (r"conv_out\.(.*)", lambda m: f"out.2.{m[1]}"),
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
         lambda m: f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.0.{_rename(m[3], RESNET)}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", lambda m: f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.1.{m[3]}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", lambda m: f"input_blocks.{1 + int(m[1]) * n + LPB}.0.op.{m[2]}"),
        (r"mid_block\.resnets\.(\d)\.(.*)", lambda m: f"middle_block.{2 * int(m[1])}.{_rename(m[2], RESNET)}"),
        (r"mid_block\.attentions\.0\.(.*)", lambda m: f"middle_block.1.{m[1]}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
         lambda m: f"output_blocks.{int(m[1]) * n + int(m[2])}.0.{_rename(m[3], RESNET)}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", lambda m: f"output_blocks.{int(m[1]) * n + int(m[2])}.1.{m[3]}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)",
         lambda m: f"output_blocks.{int(m[1]) * n + LPB}.{2 if up_attn[int(m[1])] else 1}.conv.{m[2]}"),
        # ControlNet
        (r"controlnet_cond_embedding\.conv_in\.(.*)", lambda m: f"input_hint_block.0.{m[1]}"),
        (r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)", lambda m: f"input_hint_block.{2 + 2 * int(m[1])}.{m[2]}"),
        (r"controlnet_cond_embedding\.conv_out\.(.*)", lambda m: f"input_hint_block.14.{m[1]}"),
        (r"controlnet_down_blocks\.(\d+)\.(.*)", lambda m: f"zero_convs.{m[1]}.0.{m[2]}"),
        (r"controlnet_mid_block\.(.*)", lambda m: f"middle_block_out.0.{m[1]}"),
    ]
    for pat, fn in rules:
        m = re.fullmatch(pat, k)
        if m:
            return fn(m)
    raise KeyError(f"no original name for U-Net key {k}")


def vae_ldm_key(k, levels=4):
    """diffusers AutoencoderKL key -> (original key without
    first_stage_model., whether the original is a 1x1 convolution)."""
    rules = [
        (r"(encoder|decoder)\.conv_norm_out\.(.*)", lambda m: f"{m[1]}.norm_out.{m[2]}"),
        (r"(encoder|decoder|)(\.?)(conv_in|conv_out|quant_conv|post_quant_conv)\.(.*)", lambda m: m[0]),
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
         lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{_rename(m[3], VAE_RESNET)}"),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", lambda m: f"encoder.down.{m[1]}.downsample.conv.{m[2]}"),
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)",
         lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename(m[3], VAE_RESNET)}"),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", lambda m: f"{m[1]}.mid.attn_1.{_rename(m[2], VAE_ATTN)}"),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
         lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{_rename(m[3], VAE_RESNET)}"),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)",
         lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"),
    ]
    for pat, fn in rules:
        m = re.fullmatch(pat, k)
        if m:
            key = fn(m)
            conv = bool(re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", key))
            return key, conv
    raise KeyError(f"no original name for VAE key {k}")


# Prefixes of the components in an original single-file checkpoint.
LDM_PREFIX = {"unet": "model.diffusion_model.", "text_encoder": "cond_stage_model.transformer.",
              "autoencoder": "first_stage_model.", "controlnet": "control_model."}


def ldm_state_dict(component, sd, prefix=True):
    """A diffusers / transformers state dict in the original layout
    (values shared, 1x1 convolution views for the VAE attention)."""
    pre = LDM_PREFIX[component] if prefix else ""
    out = {}
    for k, v in sd.items():
        if component in ("unet", "controlnet"):
            out[pre + unet_ldm_key(k)] = v
        elif component == "autoencoder":
            key, conv = vae_ldm_key(k)
            out[pre + key] = v[:, :, None, None] if conv else v
        else:
            out[pre + k] = v
    return out


def check_ldm_round_trip(component, model):
    """diffusers' own original -> diffusers conversion gives back model's
    state dict exactly from ldm_state_dict's output."""
    from diffusers.pipelines.stable_diffusion import convert_from_ckpt as cc

    sd = model.state_dict()
    ldm = ldm_state_dict(component, sd)
    config = dict(model.config) if component != "text_encoder" else {}
    if component == "unet":
        back = cc.convert_ldm_unet_checkpoint(dict(ldm), config)
    elif component == "controlnet":
        back = cc.convert_ldm_unet_checkpoint(dict(ldm), config, controlnet=True)
    elif component == "autoencoder":
        back = cc.convert_ldm_vae_checkpoint(dict(ldm), config)
    else:
        # convert_ldm_clip_checkpoint strips cond_stage_model.transformer.
        # and loads the rest into a CLIPTextModel.
        te = copy.deepcopy(model)
        with torch.no_grad():
            for prm in te.parameters():
                prm.zero_()
        back = cc.convert_ldm_clip_checkpoint(dict(ldm), text_encoder=te).state_dict()
    assert set(back) == set(sd), f"{component}: keys differ: {sorted(set(back) ^ set(sd))[:8]}"
    for k in sd:
        assert back[k].shape == sd[k].shape and (back[k].is_meta or torch.equal(back[k], sd[k])), \
            f"{component}: {k} differs after diffusers' conversion"
    return ldm


