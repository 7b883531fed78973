"""Reference vectors for the host's DoRA patch kind (hosts/dora_test.go).

    conformance/.venv/bin/python hosts/testdata/dora/generate.py

Needs the conformance environment (lycoris-lora and peft are pinned in
conformance/requirements.txt). Writes, next to this script:

<case>.safetensors (or <case>.0, <case>.1 for two files on one layer)
    A DoRA file in one of its two real layouts, float32, random values:
    kohya / LyCORIS: lora_unet_time_embedding_linear_1 / lora_unet_conv_in
        with lora_down.weight, lora_up.weight, alpha and dora_scale, the
        tensors (and shapes) LyCORIS 3.2's LoConModule saves with
        weight_decompose=True: dora_scale [out, 1] / [out, 1, 1, 1]
        (wd_on_out=True, the default) or [1, in] / [1, in, 1, 1]
        (wd_on_out=False);
    PEFT: unet.time_embedding.linear_1 / unet.conv_in with lora_A.weight,
        lora_B.weight and lora_magnitude_vector, the shapes PEFT 0.10's
        Linear / Conv2d layers hold with use_dora=True (magnitude [out] for
        a Linear, [1, out, 1, 1] for a Conv2d); lora_alpha in diffusers'
        lora_adapter_metadata.

reference.safetensors
    model.<key>           the small model's weights (as hosts/testdata/lycoris:
                          TimestepEncoder.RangeEncoder.Linear_1, Linear 6 -> 8,
                          and DownBlocks.Chain_1.Conv2d, Conv2d 4 -> 6, 3x3,
                          stride 2, padding 1, both with a bias)
    input.Linear          [3, 6]
    input.Conv2d          [2, 4, 7, 7]
    expected.<case>       the target layer's output with the file(s) applied
                          at run time, at a user scale of 0.75, computed by the
                          reference library's own layer in float64 (stored as
                          float32): LyCORIS's LoConModule forward (multiplier
                          0.75: ΔW whole, the multiplier on the rescaling
                          factor, float64's eps), or PEFT's lora.Linear /
                          lora.Conv2d forward with set_scale(0.75) for every
                          adapter (scale inside the norm)
    expected_fused.<case> where it differs: the output after PEFT's merge of
                          the adapters in file order (each DoRA normalises the
                          weight as merged so far)

Two files on one layer (PEFT, one layer with two adapters): a LoRA then a
DoRA (runtime and merged differ: PEFT's forward rescales the base weight
only, its merge rescales the LoRA's change too), and a DoRA then a LoRA
(the same both ways).
"""

import json
import pathlib

import torch
import torch.nn as nn
from lycoris.modules.locon import LoConModule
from peft.tuners.lora.layer import Conv2d as PeftConv2d
from peft.tuners.lora.layer import Linear as PeftLinear
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).parent
SCALE = 0.75  # the plan's user scale (mapping.Options.Scale in the test)
RANK = 2
KOHYA = {"Linear": "lora_unet_time_embedding_linear_1", "Conv2d": "lora_unet_conv_in"}
PEFT = {"Linear": "unet.time_embedding.linear_1", "Conv2d": "unet.conv_in"}
KEYS = {"Linear": "TimestepEncoder.RangeEncoder.Linear_1", "Conv2d": "DownBlocks.Chain_1.Conv2d"}
SHAPES = {"Linear": (8, 6), "Conv2d": (6, 4, 3, 3)}

gen = torch.Generator().manual_seed(20240611)


def rnd(*shape, std=0.5):
    return (torch.randn(*shape, generator=gen) * std).float()


def base_layer(target, model):
    """The target layer in float64 with the model's weights."""
    key = KEYS[target]
    layer = nn.Linear(6, 8) if target == "Linear" else nn.Conv2d(4, 6, 3, stride=2, padding=1)
    with torch.no_grad():
        layer.weight.copy_(model[f"model.{key}.weight"])
        layer.bias.copy_(model[f"model.{key}.bias"])
    return layer.double()


def jitter(m):
    """A trained-looking magnitude: the initial norms, each moved by ~20%."""
    return (m.detach().float() * (1 + 0.2 * torch.randn(m.shape, generator=gen))).float()


@torch.no_grad()
def lycoris_case(target, model, x, alpha, on_output):
    org = base_layer(target, model)
    m = LoConModule("lora", org, multiplier=SCALE, lora_dim=RANK, alpha=alpha, weight_decompose=True, wd_on_out=on_output)
    down, up = rnd(*m.lora_down.weight.shape), rnd(*m.lora_up.weight.shape)
    m.lora_down.weight.copy_(down)
    m.lora_up.weight.copy_(up)
    # dora_scale starts as the norms of the float32 weight; move it as
    # training would.
    dora_scale = jitter(m.dora_scale)
    m.dora_scale.copy_(dora_scale)
    m = m.double()
    m.apply_to()
    y = org(x.double())
    name = KOHYA[target]
    tensors = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
               f"{name}.alpha": torch.tensor(alpha, dtype=torch.float32), f"{name}.dora_scale": dora_scale}
    return [(tensors, {})], y, None


@torch.no_grad()
def peft_case(target, model, x, adapters):
    """adapters: [(use_dora, lora_alpha)], one PEFT adapter (and file) each,
    all on one layer."""
    org = base_layer(target, model)
    cls = PeftLinear if target == "Linear" else PeftConv2d
    layer = None
    names = [f"a{i}" for i in range(len(adapters))]
    for name, (use_dora, alpha) in zip(names, adapters):
        if layer is None:
            layer = cls(org, name, r=RANK, lora_alpha=alpha, init_lora_weights=False, use_dora=use_dora)
        else:
            layer.update_layer(name, RANK, alpha, 0.0, False, False, use_dora)
    files = []
    for name, (use_dora, alpha) in zip(names, adapters):
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        a.copy_(rnd(*a.shape).double())
        b.copy_(rnd(*b.shape, std=0.3).double())
        prefix = PEFT[target]
        tensors = {f"{prefix}.lora_A.weight": a.float(), f"{prefix}.lora_B.weight": b.float()}
        if use_dora:
            # PEFT's initial magnitude is the norm of W + scaling·ΔW.
            mag = layer.lora_magnitude_vector[name]
            scaling = alpha / RANK
            delta = (b.flatten(1) @ a.flatten(1)).reshape(org.weight.shape)
            init = layer._get_weight_norm(org.weight, delta, scaling)
            mag.copy_(jitter(init).double().reshape(mag.shape))
            tensors[f"{prefix}.lora_magnitude_vector"] = mag.float()
        meta = {"lora_adapter_metadata": json.dumps({"unet.r": RANK, "unet.lora_alpha": alpha})}
        files.append((tensors, meta))
    layer.set_adapter(names)
    for name in names:
        layer.set_scale(name, SCALE)
    y = layer(x.double())
    layer.merge(adapter_names=names)
    fused = layer(x.double())
    return files, y, fused


# name: target, how
CASES = {
    "dora_kohya_linear": ("Linear", lambda t, m, x: lycoris_case(t, m, x, alpha=1.0, on_output=True)),
    "dora_kohya_conv": ("Conv2d", lambda t, m, x: lycoris_case(t, m, x, alpha=3.0, on_output=True)),
    "dora_kohya_linear_input": ("Linear", lambda t, m, x: lycoris_case(t, m, x, alpha=2.0, on_output=False)),
    "dora_kohya_conv_input": ("Conv2d", lambda t, m, x: lycoris_case(t, m, x, alpha=1.0, on_output=False)),
    "dora_peft_linear": ("Linear", lambda t, m, x: peft_case(t, m, x, [(True, 4)])),
    "dora_peft_conv": ("Conv2d", lambda t, m, x: peft_case(t, m, x, [(True, 1)])),
    "lora_dora_linear": ("Linear", lambda t, m, x: peft_case(t, m, x, [(False, 2), (True, 4)])),
    "dora_lora_linear": ("Linear", lambda t, m, x: peft_case(t, m, x, [(True, 2), (False, 2)])),
}


def main():
    model = {}
    for target, key in KEYS.items():
        model[f"model.{key}.weight"] = rnd(*SHAPES[target])
        model[f"model.{key}.bias"] = rnd(SHAPES[target][0])
    inputs = {"Linear": rnd(3, 6, std=1.0), "Conv2d": rnd(2, 4, 7, 7, std=1.0)}
    ref = dict(model)
    for target, x in inputs.items():
        ref[f"input.{target}"] = x
    for name, (target, make) in CASES.items():
        files, y, fused = make(target, model, inputs[target])
        for i, (tensors, meta) in enumerate(files):
            file = name if len(files) == 1 else f"{name}.{i}"
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(HERE / f"{file}.safetensors"), metadata=meta)
        ref[f"expected.{name}"] = y.float().contiguous()
        gap = (fused - y).abs().max().item() if fused is not None else 0.0
        if gap > 1e-9:  # more than float64 rounding
            ref[f"expected_fused.{name}"] = fused.float().contiguous()
        print(f"{name}: {len(files)} file(s), output {y.abs().max():.3g} max abs, merged vs runtime {gap:.3g}")
    save_file(ref, str(HERE / "reference.safetensors"))


if __name__ == "__main__":
    main()
