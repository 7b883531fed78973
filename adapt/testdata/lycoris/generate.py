"""Reference vectors for the host's LyCORIS patch kinds (adapt/delta_test.go).

    conformance/.venv/bin/python adapt/testdata/lycoris/generate.py

Needs the conformance environment plus lycoris-lora (pinned in
conformance/requirements.txt). Writes, next to this script:

<case>.safetensors
    A LyCORIS file in its real layout: kohya module names
    (lora_unet_time_embedding_linear_1, lora_unet_conv_in) with the tensor
    names LyCORIS's modules save (diff, diff_b, hada_w1_a, ..., lokr_t2,
    alpha), float32, random values.

reference.safetensors
    model.<key>      the small model's weights, keyed by its state dict:
                     TimestepEncoder.RangeEncoder.Linear_1 (Linear 6 -> 8)
                     and DownBlocks.Chain_1.Conv2d (Conv2d 4 -> 6, 3x3,
                     stride 2, padding 1), both with a bias
    input.Linear     [3, 6]
    input.Conv2d     [2, 4, 7, 7]
    expected.<case>  the target layer's output with the file applied at a
                     user scale of 0.75: F(x, W + s·ΔW, b + s·Δb), ΔW from
                     LyCORIS's own functions (lycoris.functional.loha
                     diff_weight; lycoris.functional.lokr make_kron and
                     general.rebuild_tucker, as lycoris.modules.lokr's
                     get_weight combines them), alpha/rank as LyCORIS's
                     modules compute it (alpha / lora_dim). Computed in
                     float64, stored as float32.

The stride-2 convolution checks that the host runs a delta branch with the
target's geometry (plans do not carry it).
"""

import pathlib

import torch
import torch.nn.functional as F
from lycoris.functional import loha
from lycoris.functional.general import rebuild_tucker
from lycoris.functional.lokr import make_kron
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).parent
SCALE = 0.75  # the plan's user scale (mapping.Options.Scale in the test)
MODULES = {"Linear": "lora_unet_time_embedding_linear_1", "Conv2d": "lora_unet_conv_in"}
KEYS = {"Linear": "TimestepEncoder.RangeEncoder.Linear_1", "Conv2d": "DownBlocks.Chain_1.Conv2d"}
SHAPES = {"Linear": (8, 6), "Conv2d": (6, 4, 3, 3)}
CONV = dict(stride=2, padding=1)

gen = torch.Generator().manual_seed(20240607)


def rnd(*shape, std=0.5):
    return (torch.randn(*shape, generator=gen) * std).float()


def op(target, x, w, b):
    if target == "Linear":
        return F.linear(x, w, b)
    return F.conv2d(x, w, b, **CONV)


def loha_delta(t, alpha, tucker):
    """ΔW of a LoHa module's tensors, scaled by alpha/rank."""
    rank = t["hada_w1_b"].shape[0]
    d = t  # LyCORIS's functional names: w1d = hada_w1_b, w1u = hada_w1_a
    args = [d["hada_w1_b"], d["hada_w1_a"], d["hada_w2_b"], d["hada_w2_a"]]
    args += [d["hada_t1"], d["hada_t2"]] if tucker else [None, None]
    return loha.diff_weight(*[a.double() if a is not None else None for a in args], gamma=torch.tensor(alpha / rank, dtype=torch.float64))


def lokr_delta(t, alpha, shape):
    """ΔW of a LoKr module's tensors, as lycoris.modules.lokr's get_weight."""
    d = {k: v.double() for k, v in t.items()}
    w1 = d["lokr_w1"] if "lokr_w1" in d else d["lokr_w1_a"] @ d["lokr_w1_b"]
    if "lokr_w2" in d:
        w2 = d["lokr_w2"]
    elif "lokr_t2" in d:
        w2 = rebuild_tucker(d["lokr_t2"], d["lokr_w2_a"], d["lokr_w2_b"])
    else:
        w2 = d["lokr_w2_a"] @ d["lokr_w2_b"]
    if "lokr_w1_b" in d:
        rank = d["lokr_w1_b"].shape[0]
    elif "lokr_w2_b" in d:
        rank = d["lokr_w2_b"].shape[0]
    else:
        rank = None  # both whole: LyCORIS uses scale 1
    scale = alpha / rank if rank else 1.0
    return make_kron(w1, w2, scale).reshape(shape)


def case_tensors(kind, target, layout):
    """A module's tensors for one case, in LyCORIS's shapes."""
    out, inp, *k = SHAPES[target]
    r = 2
    t = {}
    if kind == "diff":
        t["diff"] = rnd(*SHAPES[target], std=0.1)
        if layout.get("bias"):
            t["diff_b"] = rnd(out, std=0.1)
    elif kind == "loha":
        for i in "12":
            if layout.get("tucker"):
                t[f"hada_t{i}"] = rnd(r, r, *k)
                t[f"hada_w{i}_a"] = rnd(r, out)
                t[f"hada_w{i}_b"] = rnd(r, inp)
            else:
                t[f"hada_w{i}_a"] = rnd(out, r)
                t[f"hada_w{i}_b"] = rnd(r, inp * (k[0] * k[1] if k else 1))
    elif kind == "lokr":
        a, c = layout["w1"]
        b, d = out // a, inp // c
        if layout.get("w1_factored"):
            t["lokr_w1_a"], t["lokr_w1_b"] = rnd(a, r), rnd(r, c)
        else:
            t["lokr_w1"] = rnd(a, c)
        w2 = layout.get("w2", "full")
        if w2 == "tucker":
            t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"] = rnd(r, r, *k), rnd(r, b), rnd(r, d)
        elif w2 == "factored":
            t["lokr_w2_a"], t["lokr_w2_b"] = rnd(b, r), rnd(r, d * (k[0] * k[1] if k else 1))
        elif w2 == "flat":  # a whole w2 written as a matrix
            t["lokr_w2"] = rnd(b, d * k[0] * k[1])
        else:
            t["lokr_w2"] = rnd(b, d, *k)
    elif kind == "lora":
        t["lora_down.weight"], t["lora_up.weight"] = rnd(r, inp), rnd(out, r)
    return t


def delta(kind, target, t, alpha):
    shape = SHAPES[target]
    if kind == "diff":
        return t["diff"].double(), t["diff_b"].double() if "diff_b" in t else None
    if kind == "loha":
        return loha_delta(t, alpha, "hada_t1" in t).reshape(shape), None
    if kind == "lokr":
        return lokr_delta(t, alpha, shape), None
    if kind == "lora":
        rank = t["lora_down.weight"].shape[0]
        return (t["lora_up.weight"].double() @ t["lora_down.weight"].double()) * (alpha / rank), None
    raise ValueError(kind)


# name: target, [(kind, layout, alpha)], one file per entry
CASES = {
    "diff_linear": ("Linear", [("diff", {}, None)]),
    "diff_b_linear": ("Linear", [("diff", {"bias": True}, None)]),
    "diff_b_conv": ("Conv2d", [("diff", {"bias": True}, None)]),
    "loha_linear": ("Linear", [("loha", {}, 1.0)]),
    "loha_conv": ("Conv2d", [("loha", {}, 3.0)]),
    "loha_conv_tucker": ("Conv2d", [("loha", {"tucker": True}, 1.0)]),
    "lokr_linear_full": ("Linear", [("lokr", {"w1": (2, 2)}, None)]),
    "lokr_linear_w2_factored": ("Linear", [("lokr", {"w1": (2, 2), "w2": "factored"}, 1.0)]),
    "lokr_linear_both_factored": ("Linear", [("lokr", {"w1": (4, 3), "w1_factored": True, "w2": "factored"}, 3.0)]),
    "lokr_conv_full": ("Conv2d", [("lokr", {"w1": (2, 2)}, None)]),
    "lokr_conv_w2_flat": ("Conv2d", [("lokr", {"w1": (2, 2), "w2": "flat"}, None)]),
    "lokr_conv_w2_factored": ("Conv2d", [("lokr", {"w1": (3, 2), "w2": "factored"}, 1.0)]),
    "lokr_conv_tucker": ("Conv2d", [("lokr", {"w1": (2, 2), "w1_factored": True, "w2": "tucker"}, 1.0)]),
    "lora_loha_linear": ("Linear", [("lora", {}, 1.0), ("loha", {}, 4.0)]),
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
    for name, (target, files) in CASES.items():
        w = model[f"model.{KEYS[target]}.weight"].double()
        b = model[f"model.{KEYS[target]}.bias"].double()
        for i, (kind, layout, alpha) in enumerate(files):
            t = case_tensors(kind, target, layout)
            dw, db = delta(kind, target, t, alpha)
            w = w + SCALE * dw
            if db is not None:
                b = b + SCALE * db
            out = {f"{MODULES[target]}.{k}": v.contiguous() for k, v in t.items()}
            if alpha is not None:
                out[f"{MODULES[target]}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
            file = name if len(files) == 1 else f"{name}.{i}"
            save_file(out, str(HERE / f"{file}.safetensors"))
        ref[f"expected.{name}"] = op(target, inputs[target].double(), w, b).float().contiguous()
    save_file(ref, str(HERE / "reference.safetensors"))


if __name__ == "__main__":
    main()
