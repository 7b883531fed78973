"""Golden vectors for LoRA application: real-layout LoRA files with random
values, per format, and the output of the Stable Diffusion 1.5 U-Net and
CLIP text encoder with the LoRA applied by the reference implementation.

    conformance/.venv/bin/python conformance/generate_lora.py [--full]

Models. diffusers' UNet2DConditionModel and transformers' CLIPTextModel get
seeded random values for every parameter (norms included); Refiners'
ModelConverter copies them into Refiners' SD1UNet and CLIPTextEncoderL
(without its tokenizer), pairing layers in execution order and checking the
outputs. The Refiners models are written as spec cases (base_unet_<tier>,
base_text_encoder_<tier>: params, inputs, Refiners' output); the script also
compares the two base models' outputs and stores the difference in each
case's metadata (base_max_abs).

Tiny (testdata/lora, committed): the same topology as SD 1.5 (every block,
every layer: the LoRA name table's paths all exist) at small widths. The
U-Net is generate_sd15_unet.sized_unet with widths 4/8/12, 2 heads, 2 groups,
an 8-wide text embedding and, as diffusers ties them to the first width, a
4-wide sinusoidal and 16-wide timestep embedding. The text encoder keeps
CLIP-L's 12 layers (the planner locates a component by the name table's
paths: a 2-layer encoder is not CLIP-L) at width 8, 2 heads, feed-forward 16.
Full (--full, testdata/full/lora, not committed): SD1UNet(in_channels=4) and
CLIPTextEncoderL.

Formats (one LoRA file holds U-Net and text encoder parts, as real files do;
<case>.case.safetensors holds the expected outputs, output.unet and
output.text_encoder, and the adapters to apply in order with the plugin's
parameters):

  refiners   two files, Refiners' export naming (<parent path>.<n>.<Type>
             .down/.up.weight), stacked on the same model with scales 0.7
             and 1.3; the second targets a subset of the first's layers.
             LinearLora on attention and feed-forward, Conv2dLora 1x1
             (proj_in/proj_out) and 3x3 down / 1x1 up (resnet convolutions).
             Reference: Refiners 0.4.0's LoraAdapter / LinearLora / Conv2dLora
             on its own models.
  peft       PEFT LoraConfig on attention, feed-forward, proj_in/out, resnet
             conv1/conv2/conv_shortcut/time_emb_proj (rank 4, conv LoRAs with
             3x3 down), saved by StableDiffusionPipeline.save_lora_weights;
             diffusers 0.27 writes no alpha (alpha = rank), so the user scale
             (0.8) is what is not 1.
  diffusers  the same through convert_state_dict_to_diffusers (scale 1.25).
  kohya      kohya-ss naming with per-module alpha (alpha/rank 0.25 for
             attention, 1.5 for 3x3 LoCon), LoCon on resnets, down/upsamplers
             (stride 2), time_emb_proj, conv_shortcut; text encoder attention
             and MLP (scale 0.9).
  attnprocs  the old attention-processor layout (U-Net attention only).
  For these the reference is diffusers' own loading path (what
  StableDiffusionPipeline.load_lora_weights runs): LoraLoaderMixin.lora_state_dict
  then load_lora_into_unet / load_lora_into_text_encoder (PEFT backend), and
  the user scale through diffusers.utils.scale_lora_layers, as the pipeline
  does for cross_attention_kwargs["scale"] and lora_scale.
  loha, lokr, diff  LyCORIS naming (kohya prefixes) and LyCORIS itself as the
             reference: lycoris.kohya.create_network_from_weights +
             apply_to (multiplier 0.75). LoHa with Tucker cores on 3x3
             convolutions, LoKr with a full w1 and low-rank w2 (full 4-D w2
             on convolutions), diff with diff_b (multiplier 1: LyCORIS 3.2's
             full-weight module breaks on others). On the layers of
             down_blocks.0, down_blocks.1.resnets.0, mid_block,
             up_blocks.1.upsamplers and text encoder layer 0: every kind of
             layer, and files that stay small (a full diff of everything is
             a model-sized file).
  dora_peft  PEFT LoraConfig(use_dora=True) on the peft case's targets
             (attention, feed-forward, proj_in/out, resnet conv1/conv2/
             conv_shortcut/time_emb_proj: Linear, 1x1 and 3x3 Conv2d) and the
             text encoder's, rank 2, lora_alpha = rank; random lora_A/lora_B
             and magnitudes (PEFT's initial norms moved by ~10%), saved by
             StableDiffusionPipeline.save_lora_weights (lora_A, lora_B,
             lora_magnitude_vector: [out] for a Linear, [1, out, 1, 1] for a
             Conv2d). Reference: PEFT 0.10's own DoRA layers on the diffusers
             and transformers models, scale 0.8 by scale_lora_layers
             (diffusers 0.27's loader does not read DoRA files).
  dora_lycoris  LyCORIS DoRA in kohya naming (lora_down, lora_up, alpha,
             dora_scale [out, 1] / [out, 1, 1, 1]: weight_decompose with
             LyCORIS's default wd_on_out) on the LyCORIS subset, rank 4, alpha
             2; reference: lycoris.kohya.create_network_from_weights +
             apply_to, multiplier 0.75 (LyCORIS 3.2 loads only per-output
             dora_scale files; hosts/testdata/dora covers the other axis).
  The DoRA cases draw from their own seeded generators, so generating them
  alone gives the same files.
"""

import copy
import functools
import json
import math
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import refiners.fluxion.layers as fl
import torch
from refiners.fluxion.adapters.lora import Conv2dLora, LinearLora, LoraAdapter
from refiners.fluxion.model_converter import ModelConverter
from refiners.foundationals.clip import text_encoder as clip
from refiners.foundationals.clip.text_encoder import CLIPTextEncoder
from refiners.foundationals.latent_diffusion.stable_diffusion_1 import unet as sd1
from safetensors.torch import load_file, save_file

import generate_sd15_unet as gu
from generate_clip_text import without_tokenizer
from golden import float64_twin, reference_error_note, reference_tensors, save_spec_case

HERE = Path(__file__).resolve().parent

UNET_TINY = dict(gu.TINY, sinusoidal_embedding_dim=4, timestep_embedding_dim=16)
TEXT_TINY = dict(embedding_dim=8, max_sequence_length=16, vocabulary_size=100, num_layers=12,
                 num_attention_heads=2, feedforward_dim=16)
TEXT_FULL = dict(embedding_dim=768, max_sequence_length=77, vocabulary_size=49408, num_layers=12,
                 num_attention_heads=12, feedforward_dim=3072)

REFS = {p: version(p) for p in ["torch", "refiners", "diffusers", "transformers", "peft", "lycoris-lora"]}


def refs(*names):
    return ", ".join(f"{n} {REFS[n]}" for n in ("torch",) + names)


# --- models -------------------------------------------------------------------


def refiners_unet(full):
    return (sd1.SD1UNet(in_channels=4) if full else gu.sized_unet(UNET_TINY)).eval()


def refiners_text(full):
    if full:
        return without_tokenizer(clip.CLIPTextEncoderL()).eval()

    # Named CLIPTextEncoderL: Refiners-format keys start with the root class.
    class CLIPTextEncoderL(CLIPTextEncoder):
        def __init__(self):
            super().__init__(**TEXT_TINY, use_quick_gelu=True)

    return without_tokenizer(CLIPTextEncoderL()).eval()


def diffusers_unet(p):
    from diffusers import UNet2DConditionModel

    c1, c2, c3 = p["channels_1"], p["channels_2"], p["channels_3"]
    assert p["sinusoidal_embedding_dim"] == c1 and p["timestep_embedding_dim"] == 4 * c1
    # Stable Diffusion 1.5's unet/config.json but for the sizes ("attention_head_dim"
    # is diffusers' legacy name for the number of heads).
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(c1, c2, c3, c3), layers_per_block=2, cross_attention_dim=p["clip_embedding_dim"],
        attention_head_dim=p["num_heads"], norm_num_groups=p["num_groups"],
    ).eval()


def hf_text(p):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=p["vocabulary_size"], hidden_size=p["embedding_dim"], intermediate_size=p["feedforward_dim"],
        num_hidden_layers=p["num_layers"], num_attention_heads=p["num_attention_heads"],
        max_position_embeddings=p["max_sequence_length"], hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    return CLIPTextModel(cfg).eval()


class Base:
    """The Refiners models, their community twins with the same weights, the
    inputs, and both base outputs."""

    def __init__(self, full, out_dir):
        self.full, self.tier = full, ("full" if full else "tiny")
        gen = torch.Generator().manual_seed(1)
        up = gu.FULL if full else UNET_TINY
        tp = TEXT_FULL if full else TEXT_TINY
        self.unet_params, self.text_params = up, tp
        torch.manual_seed(0)
        self.r_unet, self.r_text = refiners_unet(full), refiners_text(full)
        self.d_unet, self.d_text = diffusers_unet(up), hf_text(tp)
        randomise_community(self.d_unet, gen)
        randomise_community(self.d_text, gen)
        shape = (1, 4, 64, 64) if full else (2, 4, 8, 8)
        tokens = 77 if full else 5
        self.x = torch.randn(shape, generator=gen)
        self.emb = torch.randn(shape[0], tokens, up["clip_embedding_dim"], generator=gen)
        self.t = torch.tensor([999 if full else 250], dtype=torch.int64)
        self.ids = torch.randint(0, tp["vocabulary_size"], (2, tp["max_sequence_length"]), generator=gen)

        print(f"[{self.tier}] copying the weights to Refiners' models (ModelConverter) ...")
        # The converter runs both models on one sample; Refiners resets a
        # chain's contexts after each forward and the converter runs it
        # several times.
        def set_contexts(module, args):  # returns None: the arguments stay
            module.set_timestep(self.t)
            module.set_clip_text_embedding(self.emb[:1])

        hook = self.r_unet.register_forward_pre_hook(set_contexts)
        convert(self.d_unet, self.r_unet, (self.x[:1], self.t, self.emb[:1]), (self.x[:1],))
        hook.remove()
        convert(self.d_text, self.r_text, (self.ids[:1],), (self.ids[:1],))

        self.base_unet = self.refiners_unet_out(self.r_unet)
        self.base_text = self.refiners_text_out(self.r_text)
        base_unet64 = self.refiners_unet_out(float64_twin(self.r_unet))
        base_text64 = self.refiners_text_out(float64_twin(self.r_text))
        self.base_max_abs = {
            "unet": (self.diffusers_unet_out(self.d_unet) - self.base_unet).abs().max().item(),
            "text_encoder": (self.hf_text_out(self.d_text) - self.base_text).abs().max().item(),
        }
        print(f"[{self.tier}] base models, Refiners vs diffusers/transformers, max abs: {self.base_max_abs}")
        self.files = {
            "unet": save_spec_case(out_dir, f"base_unet_{self.tier}", spec="specs/sd15_unet.yaml",
                                   overrides={k: str(v) for k, v in up.items()}, model=self.r_unet,
                                   outputs=[self.base_unet], outputs64=[base_unet64],
                                   reference=f"refiners {REFS['refiners']} SD1UNet",
                                   inputs={"input.0": self.x, "context.diffusion.timestep": self.t,
                                           "context.cross_attention_block.clip_text_embedding": self.emb}).name,
            "text_encoder": save_spec_case(out_dir, f"base_text_encoder_{self.tier}", spec="specs/clip_text.yaml",
                                           overrides={k: str(v) for k, v in tp.items()}, model=self.r_text,
                                           outputs=[self.base_text], outputs64=[base_text64], inputs={"input.0": self.ids},
                                           reference=f"refiners {REFS['refiners']} CLIPTextEncoder without its tokenizer").name,
        }

    # Each runs the model in its own dtype: float32, or float64 for the
    # twin that measures the reference's own error.
    @torch.no_grad()
    def refiners_unet_out(self, m):
        dt = dtype_of(m)
        m.set_timestep(self.t)
        m.set_clip_text_embedding(self.emb.to(dt))
        return m(self.x.to(dt))

    @torch.no_grad()
    def refiners_text_out(self, m):
        return m(self.ids)

    @torch.no_grad()
    def diffusers_unet_out(self, m):
        dt = dtype_of(m)
        return m(self.x.to(dt), self.t, self.emb.to(dt)).sample

    @torch.no_grad()
    def hf_text_out(self, m):
        # transformers builds its causal mask in the default dtype, filled
        # with the model dtype's minimum: float64 must be the default then.
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype_of(m))
        try:
            return m(self.ids).last_hidden_state
        finally:
            torch.set_default_dtype(previous)


def dtype_of(model):
    return next(model.parameters()).dtype


def randomise_community(model, gen):
    """Seeded values for every parameter, norms included, keeping
    activations O(1): 1/sqrt(fan_in) for matrices and kernels, N(0, 1) for
    embeddings, 1 + 0.1·N for norm scales, 0.1·N for biases and shifts."""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for name, m in model.named_modules():
            for pname, p in m.named_parameters(recurse=False):
                if isinstance(m, norms):
                    p.copy_((1.0 if pname == "weight" else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
                elif isinstance(m, torch.nn.Embedding):
                    p.copy_(torch.randn(p.shape, generator=gen))
                elif p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def convert(source, target, source_args, target_args):
    # threshold bounds the norm of each layer's output difference (over the
    # whole tensor, so it grows with the size); the outputs' max abs
    # difference is measured and stored separately (base_max_abs).
    conv = ModelConverter(source_model=source, target_model=target, threshold=1e-3, verbose=False)
    if not conv.run(source_args=source_args, target_args=target_args):
        raise SystemExit(f"ModelConverter could not copy {type(source).__name__} to {type(target).__name__}")


# --- case files -----------------------------------------------------------------


def save_case(out_dir, base, name, *, adapters, outputs, outputs64, reference, extra=None):
    """<name>.case.safetensors: expected outputs per component (output.<comp>)
    with their float64 twins (ref64.<comp>: the same reference run in
    float64, the runner's yardstick) and, in the metadata, the base spec
    cases and the adapters (file + plugin parameters), applied in order.
    Runtime and fused modes are held to the same error model."""
    meta = {
        "format": name.rsplit("_", 1)[0],
        "base": json.dumps(base.files),
        "adapters": json.dumps(adapters),
        "dtype": "float32",
        "reference": reference,
        "base_max_abs": json.dumps(base.base_max_abs),
    }
    meta.update(extra or {})
    meta.update(reference_error_note(outputs, outputs64))
    tensors = reference_tensors(outputs, outputs64)
    save_file(tensors, str(Path(out_dir) / f"{name}.case.safetensors"), metadata=meta)
    for k, v in outputs.items():
        ref = base.base_unet if k == "unet" else base.base_text
        print(f"  {name}: {k}: LoRA changes the output by {(v - ref).abs().max():.3g} (max abs)")


def randn_like(t, gen, std):
    return torch.randn(t.shape, generator=gen) * std


def std_for(w):
    """A branch that moves the layer's output by O(10%)."""
    return 1.0 / math.sqrt(w[0].numel())


# --- Refiners format -------------------------------------------------------------


def refiners_targets(root, subset):
    """The layers to adapt, in walk order: every Linear and Conv2d but the
    strided Downsample and the Upsample convolutions (their parents hold
    nothing else). subset keeps the layers of every other parent:
    Refiners' naming numbers adapted layers per parent, so whole parents
    keep the names unambiguous."""
    out = []
    for layer, parent in root.walk(lambda m, p: isinstance(m, (fl.Linear, fl.Conv2d))):
        if not isinstance(parent, (fl.Downsample, fl.Upsample)):
            out.append((parent, layer))
    if subset:
        parents = []
        for p, _ in out:
            if p not in parents:
                parents.append(p)
        keep = set(id(p) for p in parents[::2])
        out = [(p, l) for p, l in out if id(p) in keep]
    return out


def make_lora(name, layer, gen, rank):
    if isinstance(layer, fl.Linear):
        lora = LinearLora(name, in_features=layer.in_features, out_features=layer.out_features, rank=rank)
    else:
        k = layer.kernel_size[0]
        lora = Conv2dLora(name, in_channels=layer.in_channels, out_channels=layer.out_channels, rank=rank,
                          kernel_size=(k, 1), stride=(layer.stride[0], 1), padding=(layer.padding[0], 0))
    with torch.no_grad():
        lora.down.weight.copy_(randn_like(lora.down.weight, gen, std_for(lora.down.weight)))
        lora.up.weight.copy_(randn_like(lora.up.weight, gen, 0.3 * std_for(lora.up.weight)))
    return lora


def attach(lora, layer, parent, adapters):
    """Adds lora to the layer's LoraAdapter, injecting one the first time."""
    if id(layer) in adapters:
        adapters[id(layer)].add_lora(lora)
    else:
        adapters[id(layer)] = LoraAdapter(layer, lora).inject(parent)


def export_refiners(roots, name):
    """Refiners' export naming: <parent path>.<n>.<Type>.{down,up}.weight, n
    counting (from 1) the adapted layers under one parent that carry this
    LoRA, in walk order."""
    out = {}
    for root in roots:
        count = {}
        for adapter, parent in root.walk(LoraAdapter):
            loras = [l for l in adapter.lora_layers if l.name == name]
            if not loras:
                continue
            n = count[id(parent)] = count.get(id(parent), 0) + 1
            stem = f"{parent.get_path()}.{n}.{type(adapter.target).__name__}"
            out[f"{stem}.down.weight"] = loras[0].down.weight.detach().clone().contiguous()
            out[f"{stem}.up.weight"] = loras[0].up.weight.detach().clone().contiguous()
    return out


def case_refiners(base, out_dir, gen):
    name = f"refiners_{base.tier}"
    roots = [base.r_unet, base.r_text]
    scales = {"a": 0.7, "b": 1.3}
    targets = {(root_i, subset): refiners_targets(root, subset) for root_i, root in enumerate(roots) for subset in (False, True)}
    adapters, injected = [], {}
    for lname, subset, rank in [("a", False, 2), ("b", True, 1)]:
        for root_i, root in enumerate(roots):
            for parent, layer in targets[(root_i, subset)]:
                lora = make_lora(lname, layer, gen, rank)
                lora.scale = scales[lname]
                attach(lora, layer, parent, injected)
        file = f"{name}.{lname}.safetensors"
        tensors = export_refiners(roots, lname)
        save_file(tensors, str(Path(out_dir) / file))
        adapters.append({"file": file, "params": {"scale": scales[lname], "name": lname}})
        print(f"  {file}: {len(tensors)} tensors")
    outputs = {"unet": base.refiners_unet_out(base.r_unet), "text_encoder": base.refiners_text_out(base.r_text)}
    outputs64 = {"unet": base.refiners_unet_out(float64_twin(base.r_unet)),
                 "text_encoder": base.refiners_text_out(float64_twin(base.r_text))}
    save_case(out_dir, base, name, adapters=adapters, outputs=outputs, outputs64=outputs64,
              reference=f"{refs('refiners')}: LoraAdapter with LinearLora / Conv2dLora, two LoRAs stacked (scales 0.7, 1.3)")
    for root in roots:
        for adapter in list(root.layers(LoraAdapter)):
            adapter.eject()
    assert torch.equal(base.refiners_unet_out(base.r_unet), base.base_unet)
    assert torch.equal(base.refiners_text_out(base.r_text), base.base_text)


# --- diffusers / PEFT / kohya / attention processors -------------------------------


UNET_PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                     "conv1", "conv2", "conv_shortcut", "time_emb_proj"]
TEXT_PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def randomise_lora_params(model, gen):
    with torch.no_grad():
        for n, p in sorted(model.named_parameters()):
            if "lora_A" in n:
                p.copy_(randn_like(p, gen, std_for(p)))
            elif "lora_B" in n:
                p.copy_(randn_like(p, gen, 0.3 * std_for(p)))


def peft_state_dicts(base, gen, rank=2):
    """A random PEFT LoRA on copies of the community models, as
    get_peft_model_state_dict gives it (the training scripts' way)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet, text = copy.deepcopy(base.d_unet), copy.deepcopy(base.d_text)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_PEFT_TARGETS))
    text.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TEXT_PEFT_TARGETS))
    randomise_lora_params(unet, gen)
    randomise_lora_params(text, gen)
    out = get_peft_model_state_dict(unet), get_peft_model_state_dict(text)
    del unet, text
    return out


def diffusers_reference(base, path, scale):
    """Outputs with the LoRA file loaded the way
    StableDiffusionPipeline.load_lora_weights loads it, at the given scale."""
    from diffusers.loaders import LoraLoaderMixin
    from diffusers.utils import scale_lora_layers

    unet, text = copy.deepcopy(base.d_unet), copy.deepcopy(base.d_text)
    state_dict, alphas = LoraLoaderMixin.lora_state_dict(str(path))
    n_keys = len(state_dict)  # alphas are already out (network_alphas)
    LoraLoaderMixin.load_lora_into_unet(state_dict, network_alphas=alphas, unet=unet, adapter_name="x")
    LoraLoaderMixin.load_lora_into_text_encoder(state_dict, network_alphas=alphas, text_encoder=text, adapter_name="x")
    # Every file tensor must have landed in a model.
    loaded = sum(1 for n, _ in list(unet.named_parameters()) + list(text.named_parameters())
                 if ".lora_A." in n or ".lora_B." in n)
    assert loaded == n_keys, f"diffusers loaded {loaded} LoRA tensors of {n_keys}"
    scale_lora_layers(unet, scale)
    scale_lora_layers(text, scale)
    out = {"unet": base.diffusers_unet_out(unet), "text_encoder": base.hf_text_out(text)}
    out64 = {"unet": base.diffusers_unet_out(unet.to(torch.float64)), "text_encoder": base.hf_text_out(text.to(torch.float64))}
    del unet, text
    return out, out64, loaded


def case_diffusers_like(base, out_dir, gen, fmt, scale):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    name = f"{fmt}_{base.tier}"
    unet_sd, text_sd = peft_state_dicts(base, gen)
    if fmt == "diffusers":
        unet_sd, text_sd = convert_state_dict_to_diffusers(unet_sd), convert_state_dict_to_diffusers(text_sd)
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=unet_sd, text_encoder_lora_layers=text_sd,
                                                  safe_serialization=True)
        tensors = load_file(str(Path(tmp) / "pytorch_lora_weights.safetensors"))
    file = f"{name}.safetensors"
    save_file(tensors, str(Path(out_dir) / file))
    outputs, outputs64, loaded = diffusers_reference(base, Path(out_dir) / file, scale)
    print(f"  {file}: {len(tensors)} tensors, {loaded} LoRA parameters loaded by diffusers")
    save_case(out_dir, base, name, adapters=[{"file": file, "params": {"scale": scale}}], outputs=outputs,
              outputs64=outputs64,
              reference=f"{refs('diffusers', 'peft', 'transformers')}: LoraLoaderMixin.lora_state_dict + "
                        f"load_lora_into_unet / load_lora_into_text_encoder, scale_lora_layers({scale})")


def kohya_modules(model, classes):
    out, seen = [], set()
    for name, m in model.named_modules():
        if type(m).__name__ not in classes:
            continue
        for child_name, child in m.named_modules():
            full = f"{name}.{child_name}"
            if child_name and isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)) and full not in seen:
                seen.add(full)
                out.append((full, child))
    return out


UNET_KOHYA = {"Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"}
TEXT_KOHYA = {"CLIPAttention", "CLIPMLP"}


def kohya_all(base):
    return [("lora_unet", n, m) for n, m in kohya_modules(base.d_unet, UNET_KOHYA)] + \
        [("lora_te", n, m) for n, m in kohya_modules(base.d_text, TEXT_KOHYA)]


def kohya_name(prefix, module):
    return prefix + "_" + module.replace(".", "_")


def case_kohya(base, out_dir, gen, scale=0.9):
    name = f"kohya_{base.tier}"
    tensors = {}
    for prefix, mod_name, mod in kohya_all(base):
        w = mod.weight
        conv3 = w.dim() == 4 and w.shape[2] > 1
        r, alpha = (2, 3.0) if conv3 else (2, 1.0)  # alpha/rank 1.5 for 3x3 LoCon, 0.5 otherwise
        kn = kohya_name(prefix, mod_name)
        down = torch.Size([r, *w.shape[1:]]) if w.dim() == 4 else torch.Size([r, w.shape[1]])
        up = torch.Size([w.shape[0], r, 1, 1]) if w.dim() == 4 else torch.Size([w.shape[0], r])
        tensors[f"{kn}.lora_down.weight"] = torch.randn(down, generator=gen) / math.sqrt(math.prod(down[1:]))
        tensors[f"{kn}.lora_up.weight"] = torch.randn(up, generator=gen) * 0.3 / math.sqrt(r) * (r / alpha) ** 0.5
        tensors[f"{kn}.alpha"] = torch.tensor(alpha)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": "2", "ss_network_alpha": "1.0",
            "ss_network_args": json.dumps({"conv_dim": "2", "conv_alpha": "3"})}
    file = f"{name}.safetensors"
    save_file(tensors, str(Path(out_dir) / file), metadata=meta)
    outputs, outputs64, loaded = diffusers_reference(base, Path(out_dir) / file, scale)
    print(f"  {file}: {len(tensors)} tensors, {loaded} LoRA parameters loaded by diffusers")
    save_case(out_dir, base, name, adapters=[{"file": file, "params": {"scale": scale}}], outputs=outputs,
              outputs64=outputs64,
              reference=f"{refs('diffusers', 'peft', 'transformers')}: LoraLoaderMixin.lora_state_dict (kohya "
                        f"conversion, network alphas) + load_lora_into_unet / load_lora_into_text_encoder, "
                        f"scale_lora_layers({scale})")


def case_attnprocs(base, out_dir, gen, scale=1.1, rank=2):
    name = f"attnprocs_{base.tier}"
    tensors = {}
    for proc in base.d_unet.attn_processors:
        attn = proc.removesuffix(".processor")
        module = base.d_unet.get_submodule(attn)
        for proj, lin in [("to_q", module.to_q), ("to_k", module.to_k), ("to_v", module.to_v), ("to_out", module.to_out[0])]:
            tensors[f"{proc}.{proj}_lora.down.weight"] = torch.randn(rank, lin.in_features, generator=gen) / math.sqrt(lin.in_features)
            tensors[f"{proc}.{proj}_lora.up.weight"] = torch.randn(lin.out_features, rank, generator=gen) * 0.3 / math.sqrt(rank)
    file = f"{name}.safetensors"
    save_file(tensors, str(Path(out_dir) / file))
    outputs, outputs64, loaded = diffusers_reference(base, Path(out_dir) / file, scale)
    outputs, outputs64 = {"unet": outputs["unet"]}, {"unet": outputs64["unet"]}  # a U-Net-only layout
    print(f"  {file}: {len(tensors)} tensors, {loaded} LoRA parameters loaded by diffusers")
    save_case(out_dir, base, name, adapters=[{"file": file, "params": {"scale": scale}}], outputs=outputs,
              outputs64=outputs64,
              reference=f"{refs('diffusers', 'peft')}: LoraLoaderMixin.lora_state_dict (attention-processor layout) + "
                        f"load_lora_into_unet, scale_lora_layers({scale})")


# --- LyCORIS ---------------------------------------------------------------------------


def factor(n):
    a = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    return a, n // a


def lycoris_tensors(kind, kn, mod, gen):
    w = mod.weight
    out_f, in_f, kernel = w.shape[0], w.shape[1], list(w.shape[2:])
    fan_in = w[0].numel()
    t = {}
    if kind == "diff":
        t[f"{kn}.diff"] = torch.randn(w.shape, generator=gen) * 0.1 / math.sqrt(fan_in)
        if mod.bias is not None:
            t[f"{kn}.diff_b"] = torch.randn(out_f, generator=gen) * 0.05
        return t
    r, alpha = 4, 2.0
    t[f"{kn}.alpha"] = torch.tensor(alpha)
    if kind == "loha":
        # ΔW = (w1_a w1_b) ⊙ (w2_a w2_b) · alpha/r; element size ~0.1/sqrt(fan_in)
        s = (0.1 / math.sqrt(fan_in) * r / alpha) ** 0.5
        if kernel and kernel != [1, 1]:
            for i in "12":
                t[f"{kn}.hada_t{i}"] = torch.randn([r, r] + kernel, generator=gen) / r
                t[f"{kn}.hada_w{i}_a"] = torch.randn(r, out_f, generator=gen) * s
                t[f"{kn}.hada_w{i}_b"] = torch.randn(r, in_f, generator=gen) / math.sqrt(r)
        else:
            flat = in_f * (math.prod(kernel) if kernel else 1)
            for i in "12":
                t[f"{kn}.hada_w{i}_a"] = torch.randn(out_f, r, generator=gen) * s / math.sqrt(r)
                t[f"{kn}.hada_w{i}_b"] = torch.randn(r, flat, generator=gen)
        return t
    # LoKr: kron(w1, w2)
    a, b = factor(out_f)
    c, d = factor(in_f)
    t[f"{kn}.lokr_w1"] = torch.randn(a, c, generator=gen) * 0.3
    # Low-rank w2 only where LyCORIS keeps it (rank < max(b, d)/2; it
    # rebuilds a module from the shapes): rank 1 then, else a full w2 and
    # alpha unused. Convolutions: full 4-D w2.
    if kernel or max(b, d) <= 2:
        t[f"{kn}.lokr_w2"] = torch.randn([b, d] + kernel, generator=gen) * 0.3 / math.sqrt(fan_in)
    else:
        r2 = 1
        t[f"{kn}.lokr_w2_a"] = torch.randn(b, r2, generator=gen)
        t[f"{kn}.lokr_w2_b"] = torch.randn(r2, d, generator=gen) * 0.3 / math.sqrt(fan_in) * (r2 / alpha)
    return t


# Every kind of layer: attention, feed-forward, 1x1 and 3x3 convolutions,
# the strided downsampler, time_emb_proj, conv_shortcut (down_blocks.1),
# text encoder attention and MLP.
LYCORIS_SUBSET = ("down_blocks.0.", "down_blocks.1.resnets.0.", "mid_block.", "up_blocks.1.upsamplers.",
                  "text_model.encoder.layers.0.")


def case_lycoris(base, out_dir, gen, kind, multiplier=0.75):
    from lycoris.kohya import create_network_from_weights

    name = f"{kind}_{base.tier}"
    modules = [m for m in kohya_all(base) if m[1].startswith(LYCORIS_SUBSET)]
    tensors = {}
    for prefix, mod_name, mod in modules:
        make = dora_tensors if kind == "dora_lycoris" else functools.partial(lycoris_tensors, kind)
        tensors.update(make(kohya_name(prefix, mod_name), mod, gen))
    file = f"{name}.safetensors"
    save_file(tensors, str(Path(out_dir) / file))
    unet, text = copy.deepcopy(base.d_unet), copy.deepcopy(base.d_text)
    network, _ = create_network_from_weights(multiplier, str(Path(out_dir) / file), None, text, unet)
    network.apply_to(text, unet, apply_text_encoder=True, apply_unet=True)
    n = len(network.unet_loras) + len(network.text_encoder_loras)
    assert n == len(modules), f"LyCORIS built {n} modules for {len(modules)}"
    kinds = sorted({type(l).__name__ for l in network.loras})
    outputs = {"unet": base.diffusers_unet_out(unet), "text_encoder": base.hf_text_out(text)}
    network.to(torch.float64)
    outputs64 = {"unet": base.diffusers_unet_out(unet.to(torch.float64)), "text_encoder": base.hf_text_out(text.to(torch.float64))}
    del unet, text, network
    print(f"  {file}: {len(tensors)} tensors, LyCORIS modules {kinds} x {n}")
    save_case(out_dir, base, name, adapters=[{"file": file, "params": {"scale": multiplier}}], outputs=outputs,
              outputs64=outputs64,
              reference=f"{refs('lycoris-lora', 'diffusers', 'transformers')}: lycoris.kohya.create_network_from_weights "
                        f"+ apply_to, multiplier {multiplier}")


# --- DoRA ------------------------------------------------------------------------------


def jitter_(p, gen, std=0.1):
    """Moves a magnitude as training would: each value by ~std relative."""
    p.mul_(1 + std * torch.randn(p.shape, generator=gen))


def case_dora_peft(base, out_dir, gen, scale=0.8, rank=2):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import scale_lora_layers
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    name = f"dora_peft_{base.tier}"
    unet, text = copy.deepcopy(base.d_unet), copy.deepcopy(base.d_text)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", use_dora=True, target_modules=UNET_PEFT_TARGETS))
    text.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", use_dora=True, target_modules=TEXT_PEFT_TARGETS))
    n = 0
    for model in (unet, text):
        randomise_lora_params(model, gen)
        with torch.no_grad():
            for _, m in sorted(model.named_modules(), key=lambda x: x[0]):
                if not isinstance(m, LoraLayer) or not m.use_dora.get("default"):
                    continue
                # PEFT's initial magnitude is the norm of W + scaling·ΔW
                # (dora_init); a trained one has moved from it.
                a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
                w = m.get_base_layer().weight
                delta = (b.flatten(1) @ a.flatten(1)).reshape(w.shape)
                mag = m.lora_magnitude_vector["default"]
                mag.copy_(m._get_weight_norm(w, delta, m.scaling["default"]).reshape(mag.shape))
                jitter_(mag, gen)
                n += 1
    unet_sd, text_sd = get_peft_model_state_dict(unet), get_peft_model_state_dict(text)
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=unet_sd, text_encoder_lora_layers=text_sd,
                                                  safe_serialization=True)
        tensors = load_file(str(Path(tmp) / "pytorch_lora_weights.safetensors"))
    magnitudes = sum(1 for k in tensors if k.endswith(".lora_magnitude_vector"))
    assert magnitudes == n, f"{magnitudes} magnitudes saved for {n} DoRA layers"
    file = f"{name}.safetensors"
    save_file(tensors, str(Path(out_dir) / file))
    scale_lora_layers(unet, scale)
    scale_lora_layers(text, scale)
    outputs = {"unet": base.diffusers_unet_out(unet), "text_encoder": base.hf_text_out(text)}
    outputs64 = {"unet": base.diffusers_unet_out(unet.to(torch.float64)), "text_encoder": base.hf_text_out(text.to(torch.float64))}
    del unet, text
    print(f"  {file}: {len(tensors)} tensors, {n} DoRA layers")
    save_case(out_dir, base, name, adapters=[{"file": file, "params": {"scale": scale}}], outputs=outputs,
              outputs64=outputs64,
              reference=f"{refs('peft', 'diffusers', 'transformers')}: LoraConfig(use_dora=True) layers on "
                        f"UNet2DConditionModel / CLIPTextModel, scale_lora_layers({scale})")


def dora_tensors(kn, mod, gen, r=4, alpha=2.0):
    """A LyCORIS DoRA module's tensors (LoConModule with weight_decompose):
    lora_down with the layer's kernel, 1x1 lora_up, alpha, and dora_scale,
    the norm of each output channel of W + (alpha/r)·ΔW moved by ~10%."""
    w = mod.weight.detach()
    out_f, kernel = w.shape[0], list(w.shape[2:])
    down = torch.randn([r, *w.shape[1:]], generator=gen) / math.sqrt(w[0].numel())
    up = torch.randn([out_f, r] + [1] * len(kernel), generator=gen) * 0.3 / math.sqrt(r)
    delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape) * (alpha / r)
    norm = (w + delta).reshape(out_f, -1).norm(dim=1).reshape(out_f, *[1] * (w.dim() - 1))
    dora_scale = norm.clone()
    jitter_(dora_scale, gen)
    return {f"{kn}.lora_down.weight": down, f"{kn}.lora_up.weight": up, f"{kn}.alpha": torch.tensor(alpha),
            f"{kn}.dora_scale": dora_scale}


def main():
    full = "--full" in sys.argv
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    out_dir = HERE / "testdata" / ("full/lora" if full else "lora")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = Base(full, out_dir)
    gen = torch.Generator().manual_seed(2)
    cases = {
        "refiners": lambda: case_refiners(base, out_dir, gen),
        "peft": lambda: case_diffusers_like(base, out_dir, gen, "peft", 0.8),
        "diffusers": lambda: case_diffusers_like(base, out_dir, gen, "diffusers", 1.25),
        "kohya": lambda: case_kohya(base, out_dir, gen),
        "attnprocs": lambda: case_attnprocs(base, out_dir, gen),
        "loha": lambda: case_lycoris(base, out_dir, gen, "loha"),
        "lokr": lambda: case_lycoris(base, out_dir, gen, "lokr"),
        # LyCORIS 3.2's full-weight module mishandles multipliers other than 1
        # (after apply_to it reads the weight it deleted, and would square
        # the multiplier), so diff runs at 1.
        "diff": lambda: case_lycoris(base, out_dir, gen, "diff", multiplier=1.0),
        "dora_peft": lambda: case_dora_peft(base, out_dir, torch.Generator().manual_seed(20)),
        "dora_lycoris": lambda: case_lycoris(base, out_dir, torch.Generator().manual_seed(21), "dora_lycoris"),
    }
    for k, f in cases.items():
        if not only or k in only:
            print(f"[{base.tier}] {k}")
            f()
    print(f"done in {time.perf_counter() - start:.0f}s; files in {out_dir}")


if __name__ == "__main__":
    main()
