"""Name table and test headers for the LoRA planner (package mapping).

    conformance/.venv/bin/python plugins/lora/mapping/testdata/generate.py

Needs the conformance environment plus diffusers, transformers and peft at
the pins of conformance/requirements.txt. Builds every model at full size
on the CPU with random weights (no download; about 8 GB of memory, a few
minutes) and writes:

data/sd15.json
    The name table. For each LoRA-able layer (Linear, Conv2d) of the Stable
    Diffusion 1.5 U-Net and of the CLIP ViT-L text encoder: its Refiners path
    (the key prefix of our specs' state dict), its diffusers / transformers
    module name (the names community LoRA formats are written in), its
    weight shape and, for convolutions, stride and padding. The pairs come
    from Refiners' ModelConverter: both models run on the same dummy input,
    basic layers are paired in execution order within groups of equal type
    and parameter shapes, and the converter then checks that the paired
    models agree layer by layer (the weights are copied across and every
    layer's output is compared).

testdata/<format>_sd15.json
    LoRA file headers in real layouts: a JSON object with "format",
    "metadata" and "tensors", one per line: key, dtype (as the host sends
    it), shape, and what the planner must make of the key: "component",
    "target" (the layer path in the component) and "param" (the binding's
    parameter path in the branch; "" for keys that are read but not bound,
    such as alpha; alpha rows also carry the tensor's "value", which a host
    may pass along, and the module's expected alpha/rank "scale").
    Expectations are computed here, from the reference models,
    independently of the Go code.

      peft              diffusers StableDiffusionPipeline.save_lora_weights of
                        peft's get_peft_model_state_dict (lora_A / lora_B)
      diffusers         the same through convert_state_dict_to_diffusers, as
                        diffusers' training scripts save (lora.down / lora.up,
                        lora_linear_layer.down / .up for the text encoder)
      attnprocs         the older attention-processor layout (no prefix,
                        attn1.processor.to_q_lora.down.weight), written from
                        the diffusers model's attn_processors names
      kohya             kohya-ss sd-scripts naming (lora_unet_ / lora_te_ +
                        the module name with dots as underscores, lora_down,
                        lora_up, alpha), LoCon convolutions included, written
                        from the diffusers / transformers module names
      refiners          Refiners' SDLoraManager-era layout: the kohya
                        attention LoRA is attached with Refiners 0.4.0's own
                        loader (Lora.from_dict + auto_attach_loras, as
                        SDLoraManager.add_loras does), then every attached
                        LoRA is named <parent path>.<n>.<target type>.down /
                        .up.weight (n counts the LoRA adapters under one
                        parent, from 1), the naming Refiners' manager uses to
                        export LoRA weights; targets are where Refiners
                        attached them
      refiners_legacy   Refiners' first LoRA files (before 0.4): tensors
                        <model>.000, .001, ... alternating up and down weights
                        of the Linear layers found under the classes named in
                        the <model>_targets metadata, in walk order
      loha, lokr, diff  LyCORIS naming (kohya names + hada_w1_a ...,
                        lokr_w1 ..., diff / diff_b), for a subset of layers
"""

import json
import math
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors import safe_open

import refiners.fluxion.layers as fl
from refiners.fluxion.adapters.lora import Lora, LoraAdapter
from refiners.fluxion.model_converter import ModelConverter
from refiners.foundationals.clip.text_encoder import CLIPTextEncoderL, FeedForward, TransformerLayer
from refiners.foundationals.clip.tokenizer import CLIPTokenizer
from refiners.foundationals.latent_diffusion import SD1UNet, StableDiffusion_1
from refiners.foundationals.latent_diffusion.cross_attention import CrossAttentionBlock2d
from refiners.foundationals.latent_diffusion.lora import SDLoraManager

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data"
DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
SF_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def reference_versions():
    return {p: version(p) for p in ["torch", "refiners", "diffusers", "transformers", "peft"]}


# --- the models --------------------------------------------------------------


def diffusers_unet():
    from diffusers import UNet2DConditionModel

    # Stable Diffusion 1.5's unet/config.json (the library defaults but for
    # the 768-wide text embedding).
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def hf_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    # openai/clip-vit-large-patch14's text model, as in Stable Diffusion 1.5.
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    return CLIPTextModel(cfg).eval()


def refiners_text_encoder():
    """CLIPTextEncoderL without its tokenizer (it then takes token ids, as
    specs/clip_text.yaml does; no parameter key changes)."""
    enc = CLIPTextEncoderL()
    assert isinstance(enc.pop(0), CLIPTokenizer)
    return enc


# --- the name table ------------------------------------------------------------


def pair(refiners_model, community_model, refiners_args, community_args, threshold):
    """Refiners path -> community module name for every basic layer, from
    ModelConverter (execution-order pairing, then a layer-by-layer output
    check with the weights copied across)."""
    conv = ModelConverter(
        source_model=community_model, target_model=refiners_model, threshold=threshold, verbose=False
    )
    if not conv.run(source_args=community_args, target_args=refiners_args):
        conv.verbose = True
        conv.stage = type(conv.stage).INIT
        conv.run(source_args=community_args, target_args=refiners_args)
        raise SystemExit("ModelConverter could not pair the models")
    return conv.get_mapping()


def table_rows(refiners_model, mapping):
    rows = []
    for path, m in refiners_model.named_modules():
        if not isinstance(m, (fl.Linear, fl.Conv2d)):
            continue
        row = {"refiners": path, "community": mapping[path], "type": type(m).__name__, "weight": list(m.weight.shape)}
        if isinstance(m, fl.Conv2d):
            row["stride"] = list(m.stride)
            row["padding"] = list(m.padding)
        rows.append(row)
    return rows


def write_json_rows(path, head, rows_key, rows):
    """JSON with one row per line: small diffs when the table changes."""
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    lines.append(f"  {json.dumps(rows_key)}: [")
    for i, r in enumerate(rows):
        lines.append("    " + json.dumps(r) + ("," if i < len(rows) - 1 else ""))
    lines.append("  ]")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")


# --- test headers --------------------------------------------------------------


def header_of(path):
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        out = []
        for k in f.keys():
            sl = f.get_slice(k)
            out.append({"key": k, "dtype": SF_DTYPES[sl.get_dtype()], "shape": list(sl.get_shape())})
    return meta, out


def write_case(name, fmt, metadata, tensors):
    for t in tensors:
        assert {"key", "dtype", "shape", "component", "target", "param"} <= t.keys(), t
    write_json_rows(HERE / f"{name}.json", {"format": fmt, "metadata": metadata}, "tensors", tensors)
    print(f"  testdata/{name}.json: {len(tensors)} tensors")


def kohya_name(prefix, module):
    return prefix + "_" + module.replace(".", "_")


def shape_of(mod):
    w = mod.weight
    return list(w.shape)


def lora_shapes(mod, rank):
    """kohya / LoCon down and up shapes for a Linear or Conv2d target: a
    convolution's down takes the target's kernel, its up is 1x1."""
    w = shape_of(mod)
    if len(w) == 2:
        return [rank, w[1]], [w[0], rank]
    return [rank, w[1], w[2], w[3]], [w[0], rank, 1, 1]


def targets_by_community(rows):
    return {r["community"]: r for r in rows}


def kohya_modules(unet, te, unet_classes, te_classes):
    """(component, kohya prefix, module name, module) for every Linear and
    Conv2d under the given classes, as kohya's LoRA network selects them."""
    out = []
    for component, prefix, model, classes in [("unet", "lora_unet", unet, unet_classes), ("text_encoder", "lora_te", te, te_classes)]:
        seen = set()
        for name, m in model.named_modules():
            if type(m).__name__ not in classes:
                continue
            for child_name, child in m.named_modules():
                if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)) and child_name:
                    full = f"{name}.{child_name}"
                    if full not in seen:
                        seen.add(full)
                        out.append((component, prefix, full, child))
    return out


def main():
    torch.manual_seed(0)
    refs = reference_versions()
    print("reference:", refs)

    # U-Net
    print("pairing the U-Nets ...")
    d_unet = diffusers_unet()
    r_unet = SD1UNet(in_channels=4)
    x = torch.randn(1, 4, 32, 32)
    t = torch.tensor([10])
    emb = torch.randn(1, 77, 768)

    def set_contexts(module, args):
        # Refiners resets a chain's contexts after every forward and the
        # converter runs the model several times.
        module.set_timestep(timestep=t)
        module.set_clip_text_embedding(clip_text_embedding=emb)

    hook = r_unet.register_forward_pre_hook(set_contexts)
    unet_map = pair(r_unet, d_unet, (x,), (x, t, emb), threshold=1e-3)
    hook.remove()
    unet_rows = table_rows(r_unet, unet_map)

    # Text encoder
    print("pairing the text encoders ...")
    hf_te = hf_text_encoder()
    r_te = refiners_text_encoder()
    ids = torch.randint(0, 49408, (1, 77))
    te_map = pair(r_te, hf_te, (ids,), (ids,), threshold=1e-3)
    te_rows = table_rows(r_te, te_map)

    DATA.mkdir(exist_ok=True)
    table = [dict(component="unet", **r) for r in unet_rows] + [dict(component="text_encoder", **r) for r in te_rows]
    write_json_rows(
        DATA / "sd15.json",
        {
            "architecture": "sd15",
            "doc": "Stable Diffusion 1.5: Refiners paths (SD1UNet, CLIPTextEncoderL) of every Linear and Conv2d with "
            "the diffusers UNet2DConditionModel / transformers CLIPTextModel module names, paired by Refiners' "
            "ModelConverter. Generated by plugins/lora/mapping/testdata/generate.py; do not edit.",
            "reference": refs,
            "roots": {"unet": "SD1UNet", "text_encoder": "CLIPTextEncoderL"},
        },
        "layers",
        table,
    )
    print(f"  data/sd15.json: {len(unet_rows)} U-Net and {len(te_rows)} text encoder layers")
    unet_by = targets_by_community(unet_rows)
    te_by = targets_by_community(te_rows)
    by = {"unet": unet_by, "text_encoder": te_by}

    # --- diffusers / peft ----------------------------------------------------
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    rank = 4
    unet_cfg = LoraConfig(
        r=rank,
        lora_alpha=rank,
        init_lora_weights="gaussian",
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                        "conv1", "conv2", "conv_shortcut", "time_emb_proj"],
    )
    te_cfg = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                        target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    d_unet.add_adapter(unet_cfg)
    hf_te.add_adapter(te_cfg)
    peft_unet = get_peft_model_state_dict(d_unet)
    peft_te = get_peft_model_state_dict(hf_te)

    def diffusers_case(name, fmt, unet_sd, te_sd, param_of):
        with tempfile.TemporaryDirectory() as tmp:
            StableDiffusionPipeline.save_lora_weights(
                tmp, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd, safe_serialization=True
            )
            meta, tensors = header_of(Path(tmp) / "pytorch_lora_weights.safetensors")
        for tt in tensors:
            component, rest = tt["key"].split(".", 1)
            module, param = param_of(rest)
            row = by[component][module]
            tt.update(component=component, target=row["refiners"], param=branch_param(row["type"], param))
        write_case(name, fmt, meta, tensors)

    def branch_param(layer_type, role):
        return {"down": f"{layer_type}_1.weight", "up": f"{layer_type}_2.weight"}[role]

    def split_suffix(rest, suffixes):
        for suffix, role in suffixes:
            if rest.endswith(suffix):
                return rest[: -len(suffix)], role
        raise ValueError(rest)

    peft_suffixes = [(".lora_A.weight", "down"), (".lora_B.weight", "up")]
    diffusers_suffixes = [
        (".lora.down.weight", "down"),
        (".lora.up.weight", "up"),
        (".lora_linear_layer.down.weight", "down"),
        (".lora_linear_layer.up.weight", "up"),
    ] + peft_suffixes  # the conversion renames attention projections only
    print("writing headers ...")
    diffusers_case("peft_sd15", "peft", peft_unet, peft_te, lambda r: split_suffix(r, peft_suffixes))
    diffusers_case(
        "diffusers_sd15",
        "diffusers",
        convert_state_dict_to_diffusers(peft_unet),
        convert_state_dict_to_diffusers(peft_te),
        lambda r: split_suffix(r, diffusers_suffixes),
    )

    # Attention processors (diffusers <= 0.20 train_text_to_image_lora):
    # keys <attention module>.processor.to_{q,k,v,out}_lora.{down,up}.weight,
    # no component prefix.
    tensors = []
    for proc in d_unet.attn_processors:  # e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor
        attn = proc.removesuffix(".processor")
        for proj, module in [("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0")]:
            row = unet_by[f"{attn}.{module}"]
            out_f, in_f = row["weight"]
            for role, shape in [("down", [rank, in_f]), ("up", [out_f, rank])]:
                tensors.append(dict(key=f"{proc}.{proj}_lora.{role}.weight", dtype="float32", shape=shape,
                                    component="unet", target=row["refiners"], param=branch_param("Linear", role)))
    write_case("attnprocs_sd15", "diffusers-attnprocs", {}, tensors)

    # --- kohya ------------------------------------------------------------------
    d_unet_plain, hf_te_plain = diffusers_unet(), hf_text_encoder()
    unet_classes = {"Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"}
    te_classes = {"CLIPAttention", "CLIPMLP"}
    modules = kohya_modules(d_unet_plain, hf_te_plain, unet_classes, te_classes)
    tensors = []
    for component, prefix, name, mod in modules:
        row = by[component][name]
        conv3 = isinstance(mod, torch.nn.Conv2d) and mod.kernel_size != (1, 1)
        r, alpha = (2, 2.0) if conv3 else (4, 1.0)  # alpha/rank: 1 for 3x3 convolutions, 0.25 otherwise
        down, up = lora_shapes(mod, r)
        kn = kohya_name(prefix, name)
        tensors += [
            dict(key=f"{kn}.alpha", dtype="float16", shape=[], component=component, target=row["refiners"], param="",
                 value=alpha, scale=alpha / r),
            dict(key=f"{kn}.lora_down.weight", dtype="float16", shape=down, component=component,
                 target=row["refiners"], param=branch_param(row["type"], "down")),
            dict(key=f"{kn}.lora_up.weight", dtype="float16", shape=up, component=component, target=row["refiners"],
                 param=branch_param(row["type"], "up")),
        ]
    write_case("kohya_sd15", "kohya", {"ss_network_module": "networks.lora", "ss_network_dim": "4",
                                       "ss_network_alpha": "1.0",
                                       "ss_network_args": json.dumps({"conv_dim": "2", "conv_alpha": "2"})}, tensors)

    # --- Refiners (0.4.0 loader, SDLoraManager export naming) ------------------
    attention_modules = kohya_modules(d_unet_plain, hf_te_plain, {"Transformer2DModel"}, te_classes)
    del d_unet, hf_te, d_unet_plain, hf_te_plain
    sd = StableDiffusion_1()
    base_paths = {}
    for comp, root in [("unet", sd.unet), ("text_encoder", sd.clip_text_encoder)]:
        for path, m in root.named_modules():
            base_paths[id(m)] = (comp, path)
    # --- Refiners legacy (<model>.NNN + <model>_targets), on the base model ------
    def legacy_linears(root, classes):
        out = []
        for cls in classes:
            if cls is None:
                out += [(m, p) for m, p in root.walk(fl.Linear)]
                continue
            for chain, _ in root.walk(cls):
                out += [(m, p) for m, p in chain.walk(fl.Linear)]
        return out

    legacy = {
        "unet": ("CrossAttentionBlock2d", [CrossAttentionBlock2d], sd.unet),
        "text_encoder": ("Attention,FeedForward", [fl.Attention, FeedForward], sd.clip_text_encoder),
    }
    tensors, metadata = [], {}
    for comp, (names, classes, root) in legacy.items():
        metadata[f"{comp}_targets"] = names
        linears = legacy_linears(root, classes)
        i = 0
        for lin, _ in linears:
            target = base_paths[id(lin)][1]
            for role, shape in [("up", [lin.out_features, rank]), ("down", [rank, lin.in_features])]:
                tensors.append(dict(key=f"{comp}.{i:03d}", dtype="float32", shape=shape, component=comp,
                                    target=target, param=branch_param("Linear", role)))
                i += 1
    write_case("refiners_legacy_sd15", "refiners-legacy", metadata, tensors)
    # --- Refiners SDLoraManager-era ----------------------------------------------
    kohya_sd = {}
    for component, prefix, name, mod in attention_modules:
        down, up = lora_shapes(mod, rank)
        kn = kohya_name(prefix, name)
        kohya_sd[f"{kn}.lora_down.weight"] = torch.randn(down)
        kohya_sd[f"{kn}.lora_up.weight"] = torch.randn(up)
    loras = Lora.from_dict("test", kohya_sd)
    loras = {k: loras[k] for k in sorted(loras, key=SDLoraManager.sort_keys)}
    manager = SDLoraManager(sd)
    manager.add_loras_to_unet(loras)
    manager.add_loras_to_text_encoder(loras)
    attached = {}  # kohya module -> (component, base path) as Refiners 0.4.0 attached it
    for key, lora in loras.items():
        adapter = lora.parent
        assert isinstance(adapter, LoraAdapter), key
        attached[key] = base_paths[id(adapter.target)]
    # Where Refiners' own loader and the name table agree.
    agree = {"unet": [0, 0], "text_encoder": [0, 0]}
    disagreements = []
    for component, prefix, name, _ in attention_modules:
        kn = kohya_name(prefix, name)
        comp, path = attached[kn]
        ok = comp == component and path == by[component][name]["refiners"]
        agree[component][0 if ok else 1] += 1
        if not ok:
            disagreements.append(f"{kn}: Refiners 0.4.0 attaches to {path}, the table says {by[component][name]['refiners']}")
    print(f"  Refiners 0.4.0's loader vs the name table (agree, differ): {agree}")
    for d in disagreements[:8]:
        print("    " + d)
    assert agree["unet"][1] == 0, "Refiners' loader and the name table disagree on the U-Net"

    tensors = []
    for comp, root in [("unet", sd.unet), ("text_encoder", sd.clip_text_encoder)]:
        prev, n = None, 0
        for adapter, parent in root.walk(LoraAdapter):
            lora = next(l for l in adapter.lora_layers if l.name == "test")
            n = n + 1 if parent is prev else 1
            prev = parent
            typ = type(adapter.target).__name__
            stem = f"{parent.get_path()}.{n}.{typ}"
            target = base_paths[id(adapter.target)][1]
            for role, w in [("down", lora.down.weight), ("up", lora.up.weight)]:
                tensors.append(dict(key=f"{stem}.{role}.weight", dtype=DTYPES[w.dtype], shape=list(w.shape),
                                    component=comp, target=target, param=branch_param(typ, role)))
    write_case("refiners_sd15", "refiners", {}, tensors)

    del sd, manager, loras

    # --- LyCORIS: LoHa, LoKr, full diff (a subset of layers) --------------------
    d_unet_plain, hf_te_plain = diffusers_unet(), hf_text_encoder()
    subset = [
        m for m in kohya_modules(d_unet_plain, hf_te_plain, unet_classes, te_classes)
        if m[2].startswith(("down_blocks.0.", "mid_block.", "text_model.encoder.layers.0."))
    ]

    def factor(n):
        a = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
        return a, n // a

    loha, lokr, diff = [], [], []
    for component, prefix, name, mod in subset:
        row = by[component][name]
        kn = kohya_name(prefix, name)
        w = shape_of(mod)
        out_f, in_f = w[0], w[1]
        kernel = w[2:]
        base = dict(component=component, target=row["refiners"])
        r = 4
        # LoHa: (w1_a w1_b) * (w2_a w2_b); 3x3 convolutions with Tucker cores.
        if kernel and kernel != [1, 1]:
            parts = [("hada_t1", [r, r] + kernel), ("hada_w1_a", [r, out_f]), ("hada_w1_b", [r, in_f]),
                     ("hada_t2", [r, r] + kernel), ("hada_w2_a", [r, out_f]), ("hada_w2_b", [r, in_f])]
        else:
            flat = in_f * (math.prod(kernel) if kernel else 1)
            parts = [("hada_w1_a", [out_f, r]), ("hada_w1_b", [r, flat]),
                     ("hada_w2_a", [out_f, r]), ("hada_w2_b", [r, flat])]
        loha.append(dict(key=f"{kn}.alpha", dtype="float32", shape=[], param="", value=2.0, scale=2.0 / r, **base))
        loha += [dict(key=f"{kn}.{p}", dtype="float32", shape=s, param=p, **base) for p, s in parts]
        # LoKr: kron(w1, w2); w1 full, w2 low-rank for linears, full for convolutions.
        a, b = factor(out_f)
        c, d = factor(in_f)
        if kernel:
            parts = [("lokr_w1", [a, c]), ("lokr_w2", [b, d] + kernel)]
            scale = 1.0  # no low-rank factor: alpha is not used
        else:
            parts = [("lokr_w1", [a, c]), ("lokr_w2_a", [b, r]), ("lokr_w2_b", [r, d])]
            scale = 2.0 / r
        lokr.append(dict(key=f"{kn}.alpha", dtype="float32", shape=[], param="", value=2.0, scale=scale, **base))
        lokr += [dict(key=f"{kn}.{p}", dtype="float32", shape=s, param=p, **base) for p, s in parts]
        # Full-weight difference.
        diff.append(dict(key=f"{kn}.diff", dtype="float16", shape=w, param="weight", **base))
        if mod.bias is not None:
            diff.append(dict(key=f"{kn}.diff_b", dtype="float16", shape=[out_f], param="bias", **base))
    write_case("loha_sd15", "loha", {}, loha)
    write_case("lokr_sd15", "lokr", {}, lokr)
    write_case("diff_sd15", "diff", {}, diff)


if __name__ == "__main__":
    sys.exit(main())
