"""Golden vectors for every core layer, from the reference implementation.

Each case builds a layer with Refiners (refiners==0.4.0 on torch==2.1.2, or
plain torch where Refiners has no such layer), gives every parameter seeded
random values, runs it on seeded random inputs, and writes one safetensors
file holding the parameters (``param.<state-dict key>``), the inputs
(``input.<i>``) and the expected outputs (``output.<i>``). Its metadata says
how the Go side builds the same layer (``module``, JSON in Refiners' names),
which contexts to seed (``contexts``), and the tolerances.

Run through conformance/setup-python.sh's venv:
    conformance/.venv/bin/python conformance/generate_layers.py [OUT_DIR]
"""

import json
import sys
from pathlib import Path

import refiners
import refiners.fluxion.layers as fl
import torch
from refiners.fluxion.layers.activations import GeLUApproximation
from safetensors.torch import save_file

from golden import float64_twin, reference_error_note, reference_tensors, tree_print, upcast

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

CASES = []


def case(name, module, build, inputs, dtype="float32", contexts=None, call=None):
    """Registers a case.

    module: the Go-side description, {"type": ..., <args>, "children": [...]}.
    build: () -> torch module (Refiners or torch), parameters randomised later.
    inputs: list of (shape, kind) with kind "float", "int:<high>", "bool".
    call: optional (module, inputs) -> outputs, when the call is not module(*inputs).
    contexts: {"context": {"key": v}} seeded before the call, where v is the
        index of an input (that input is then not passed to the call), or
        "list" / "unset" for an initial value (see INITIAL) that only Refiners
        needs.
    """
    CASES.append(dict(name=name, module=module, build=build, inputs=inputs, dtype=dtype, contexts=contexts or {}, call=call))


class Fn(torch.nn.Module):
    """A plain torch function as a module, for layers Refiners does not have."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *x):
        return self.fn(*x)


# Initial context values Refiners needs to exist before a SetContext writes
# them (an empty context makes SetContext a silent no-op there).
INITIAL = {"list": list, "unset": lambda: None}


def make_input(shape, kind, gen, dtype):
    if kind == "float":
        return torch.randn(shape, generator=gen).to(dtype)
    if kind.startswith("int:"):
        return torch.randint(0, int(kind[4:]), shape, generator=gen)
    if kind == "bool":
        return torch.rand(shape, generator=gen) > 0.3
    if kind.startswith("size:"):  # a spatial size, passed between layers as int64
        return torch.tensor([int(v) for v in kind[5:].split(",")], dtype=torch.int64)
    raise ValueError(kind)


def has_lambda(module):
    """Refiners prints a Lambda by its Python function's signature, which has
    no Go counterpart; such trees are not compared."""
    return any(isinstance(m, fl.Lambda) for m in module.modules())


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def run_case(c, module, inputs):
    """Runs the case's module on inputs (seeding its contexts first) and
    returns its outputs as a tuple."""
    if c["contexts"] and isinstance(module, fl.Chain):
        for ctx, kv in c["contexts"].items():
            module.set_context(ctx, {k: inputs[v] if isinstance(v, int) else INITIAL[v]() for k, v in kv.items()})
    with torch.no_grad():
        try:
            out = c["call"](module, inputs) if c["call"] else module(*inputs)
        except fl.chain.ReturnException as ret:
            out = ret.value
    return as_tuple(out)


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.safetensors"):
        stale.unlink()
    for i, c in enumerate(CASES):
        torch.manual_seed(1000 + i)
        gen = torch.Generator().manual_seed(2000 + i)
        dtype = DTYPES[c["dtype"]]
        module = c["build"]()
        state = module.state_dict()
        # Seeded values for every parameter, including norm scales and
        # biases whose defaults (ones, zeros) would hide mistakes.
        with torch.no_grad():
            for key in sorted(state):
                t = state[key]
                if t.is_floating_point():
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
        module = module.to(dtype=dtype)
        module.eval()
        inputs = [make_input(shape, kind, gen, dtype) for shape, kind in c["inputs"]]
        outputs = run_case(c, module, inputs)
        # The same case in float64 on the same (exactly upcast) weights and
        # inputs: the runner's yardstick for the reference's own error.
        outputs64 = run_case(c, float64_twin(module), upcast(inputs))
        tensors = {f"param.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
        tensors.update({f"input.{j}": x.contiguous() for j, x in enumerate(inputs)})
        tensors.update(reference_tensors(outputs, outputs64))
        meta = {
            "case": c["name"],
            "module": json.dumps(c["module"]),
            "contexts": json.dumps(c["contexts"]),
            "dtype": c["dtype"],
            "inputs": str(len(inputs)),
            "outputs": str(len(outputs)),
            **reference_error_note(outputs, outputs64),
            "reference": f"torch {torch.__version__}, refiners {getattr(refiners, '__version__', '0.4.0')}",
        }
        if isinstance(module, fl.Module) and not has_lambda(module):
            meta["tree"] = tree_print(module)
        save_file(tensors, str(out_dir / f"{c['name']}.safetensors"), metadata=meta)
    print(f"wrote {len(CASES)} cases to {out_dir}")


# --- the cases ---------------------------------------------------------------

F = "float"
lin = lambda i, o, bias=True: {"type": "Linear", "in_features": i, "out_features": o, "bias": bias}

case("linear", lin(6, 5), lambda: fl.Linear(6, 5), [((3, 6), F)])
case("linear_nobias", lin(6, 5, False), lambda: fl.Linear(6, 5, bias=False), [((2, 4, 6), F)])
case("linear_bf16", lin(16, 8), lambda: fl.Linear(16, 8), [((4, 16), F)], dtype="bfloat16")
case("conv2d", {"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1},
     lambda: fl.Conv2d(3, 4, 3, padding=1), [((2, 3, 7, 6), F)])
case("conv2d_stride_groups", {"type": "Conv2d", "in_channels": 4, "out_channels": 6, "kernel_size": 3, "stride": 2, "groups": 2, "dilation": 1, "use_bias": False},
     lambda: fl.Conv2d(4, 6, 3, stride=2, groups=2, use_bias=False), [((1, 4, 9, 8), F)])
case("conv2d_1x1_bf16", {"type": "Conv2d", "in_channels": 8, "out_channels": 4, "kernel_size": 1},
     lambda: fl.Conv2d(8, 4, 1), [((1, 8, 5, 5), F)], dtype="bfloat16")
case("conv_transpose2d", {"type": "ConvTranspose2d", "in_channels": 4, "out_channels": 3, "kernel_size": 4, "stride": 2, "padding": 1},
     lambda: fl.ConvTranspose2d(4, 3, 4, stride=2, padding=1), [((1, 4, 5, 6), F)])
case("layer_norm", {"type": "LayerNorm", "normalized_shape": 8}, lambda: fl.LayerNorm(8), [((2, 3, 8), F)])
case("layer_norm_bf16", {"type": "LayerNorm", "normalized_shape": 32}, lambda: fl.LayerNorm(32), [((2, 32), F)], dtype="bfloat16")
case("group_norm", {"type": "GroupNorm", "channels": 8, "num_groups": 4}, lambda: fl.GroupNorm(8, 4), [((2, 8, 5, 5), F)])
case("group_norm_eps", {"type": "GroupNorm", "channels": 6, "num_groups": 3, "eps": 1e-6}, lambda: fl.GroupNorm(6, 3, eps=1e-6), [((1, 6, 4, 4), F)])
case("layer_norm_2d", {"type": "LayerNorm2d", "channels": 5}, lambda: fl.LayerNorm2d(5), [((2, 5, 3, 4), F)])
case("instance_norm_2d", {"type": "InstanceNorm2d", "num_features": 3}, lambda: fl.InstanceNorm2d(3), [((2, 3, 5, 5), F)])
case("embedding", {"type": "Embedding", "num_embeddings": 10, "embedding_dim": 4}, lambda: fl.Embedding(10, 4), [((2, 5), "int:10")])

for act in ["ReLU", "SiLU", "Sigmoid"]:
    case(act.lower(), {"type": act}, getattr(fl, act), [((3, 7), F)])
case("gelu", {"type": "GeLU"}, lambda: fl.GeLU(), [((3, 7), F)])
case("gelu_tanh", {"type": "GeLU", "approximation": "tanh"}, lambda: fl.GeLU(GeLUApproximation.TANH), [((3, 7), F)])
case("gelu_sigmoid", {"type": "GeLU", "approximation": "sigmoid"}, lambda: fl.GeLU(GeLUApproximation.SIGMOID), [((3, 7), F)])
case("tanh", {"type": "Tanh"}, lambda: Fn(torch.tanh), [((3, 7), F)])
case("approximate_gelu", {"type": "ApproximateGeLU"}, lambda: Fn(lambda x: x * torch.sigmoid(1.702 * x)), [((3, 7), F)])
case("glu", {"type": "GLU", "activation": {"type": "GeLU"}}, lambda: fl.GLU(fl.GeLU()), [((2, 8), F)])
case("gelu_bf16", {"type": "GeLU"}, lambda: fl.GeLU(), [((4, 16), F)], dtype="bfloat16")

case("sdpa", {"type": "ScaledDotProductAttention", "num_heads": 2},
     lambda: fl.ScaledDotProductAttention(num_heads=2), [((2, 5, 8), F), ((2, 7, 8), F), ((2, 7, 8), F)])
case("sdpa_causal", {"type": "ScaledDotProductAttention", "num_heads": 4, "is_causal": True},
     lambda: fl.ScaledDotProductAttention(num_heads=4, is_causal=True), [((1, 6, 8), F), ((1, 6, 8), F), ((1, 6, 8), F)])
case("sdpa_mask", {"type": "ScaledDotProductAttention", "num_heads": 1},
     lambda: Fn(lambda q, k, v, m: torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), attn_mask=m).squeeze(1)),
     [((2, 4, 8), F), ((2, 6, 8), F), ((2, 6, 8), F), ((4, 6), "bool")])
case("attention", {"type": "Attention", "embedding_dim": 8, "num_heads": 2, "key_embedding_dim": 6, "value_embedding_dim": 5},
     lambda: fl.Attention(8, num_heads=2, key_embedding_dim=6, value_embedding_dim=5), [((2, 3, 8), F), ((2, 4, 6), F), ((2, 4, 5), F)])
case("self_attention", {"type": "SelfAttention", "embedding_dim": 8, "num_heads": 2, "is_causal": True},
     lambda: fl.SelfAttention(8, num_heads=2, is_causal=True), [((2, 5, 8), F)])
case("self_attention_bf16", {"type": "SelfAttention", "embedding_dim": 16, "num_heads": 4},
     lambda: fl.SelfAttention(16, num_heads=4), [((1, 6, 16), F)], dtype="bfloat16")
case("self_attention_2d", {"type": "SelfAttention2d", "channels": 8, "num_heads": 2},
     lambda: fl.SelfAttention2d(8, num_heads=2), [((2, 8, 3, 5), F)])

case("max_pool_2d", {"type": "MaxPool2d", "kernel_size": 2}, lambda: fl.MaxPool2d(2), [((1, 3, 6, 7), F)])
case("max_pool_2d_stride_pad", {"type": "MaxPool2d", "kernel_size": 3, "stride": 2, "padding": 1},
     lambda: fl.MaxPool2d(3, stride=2, padding=1), [((1, 2, 7, 7), F)])
case("interpolate", {"type": "Interpolate"}, lambda: fl.Interpolate(),
     [((1, 2, 3, 4), F), ((2,), "size:5,7")], call=lambda m, x: m(x[0], torch.Size(x[1].tolist())))
# Refiners 0.4.0's Interpolate is nearest-only; bilinear is checked against torch.
case("interpolate_bilinear", {"type": "Interpolate", "mode": "bilinear"},
     lambda: Fn(lambda x, size: torch.nn.functional.interpolate(x, size=tuple(size.tolist()), mode="bilinear", align_corners=False)),
     [((1, 2, 3, 4), F), ((2,), "size:6,5")])
case("downsample", {"type": "Downsample", "channels": 4, "scale_factor": 2},
     lambda: fl.Downsample(4, scale_factor=2), [((1, 4, 8, 8), F)], contexts={"sampling": {"shapes": "list"}})
case("downsample_padded", {"type": "Downsample", "channels": 4, "scale_factor": 2, "padding": 1, "register_shape": False},
     lambda: fl.Downsample(4, scale_factor=2, padding=1, register_shape=False), [((1, 4, 7, 9), F)])
case("upsample_static", {"type": "Upsample", "channels": 3, "upsample_factor": 2},
     lambda: fl.Upsample(3, upsample_factor=2), [((1, 3, 4, 5), F)])
case("down_up_shapes", {"type": "Chain", "children": [
        {"type": "Downsample", "channels": 3, "scale_factor": 2},
        {"type": "Upsample", "channels": 3}]},
     lambda: fl.Chain(fl.Downsample(3, scale_factor=2), fl.Upsample(3)), [((1, 3, 7, 9), F)],
     contexts={"sampling": {"shapes": "list"}})
case("reflection_pad_2d", {"type": "ReflectionPad2d", "padding": 2}, lambda: fl.ReflectionPad2d(2), [((1, 2, 4, 5), F)])
case("pixel_unshuffle", {"type": "PixelUnshuffle", "downscale_factor": 2}, lambda: fl.PixelUnshuffle(2), [((1, 2, 4, 6), F)])

case("flatten", {"type": "Flatten", "start_dim": 1}, lambda: fl.Flatten(1), [((2, 3, 4, 5), F)])
case("flatten_range", {"type": "Flatten", "start_dim": 1, "end_dim": 2}, lambda: fl.Flatten(1, 2), [((2, 3, 4, 5), F)])
case("unflatten", {"type": "Unflatten", "dim": 1, "sizes": [3, 4]}, lambda: fl.Unflatten(1),
     [((2, 12, 5), F)], call=lambda m, x: m(x[0], (3, 4)))
case("reshape", {"type": "Reshape", "shape": [4, -1]}, lambda: fl.Reshape(4, -1), [((2, 3, 8), F)])
case("transpose", {"type": "Transpose", "dim0": 1, "dim1": 2}, lambda: fl.Transpose(1, 2), [((2, 3, 4), F)])
case("permute", {"type": "Permute", "dims": [0, 2, 3, 1]}, lambda: fl.Permute(0, 2, 3, 1), [((2, 3, 4, 5), F)])
case("squeeze", {"type": "Squeeze", "dim": 1}, lambda: fl.Squeeze(1), [((2, 1, 4), F)])
case("unsqueeze", {"type": "Unsqueeze", "dim": -1}, lambda: fl.Unsqueeze(-1), [((2, 4), F)])
case("slicing", {"type": "Slicing", "dim": 1, "start": 1, "end": 7, "step": 2}, lambda: fl.Slicing(dim=1, start=1, end=7, step=2), [((2, 9, 3), F)])
case("slicing_negative", {"type": "Slicing", "dim": -1, "start": -3}, lambda: fl.Slicing(dim=-1, start=-3), [((2, 6), F)])
case("chunk", {"type": "Chunk", "chunks": 3, "dim": 1}, lambda: Fn(lambda x: x.chunk(3, 1)), [((2, 7), F)])
case("multiply", {"type": "Multiply", "scale": 2.5, "bias": -1.0}, lambda: fl.Multiply(2.5, -1.0), [((3, 4), F)])
case("parameter", {"type": "Parameter", "dims": [3, 4]}, lambda: fl.Parameter(3, 4), [((2, 5), F)])
case("sin_cos", {"type": "Parallel", "children": [{"type": "Sin"}, {"type": "Cos"}]},
     lambda: fl.Parallel(fl.Sin(), fl.Cos()), [((3, 4), F)])
case("identity", {"type": "Identity"}, lambda: fl.Identity(), [((2, 3), F)])

# Structural chains.
case("chain", {"type": "Chain", "children": [lin(4, 8), {"type": "SiLU"}, lin(8, 3)]},
     lambda: fl.Chain(fl.Linear(4, 8), fl.SiLU(), fl.Linear(8, 3)), [((2, 4), F)])
case("residual", {"type": "Residual", "children": [{"type": "LayerNorm", "normalized_shape": 6}, lin(6, 6)]},
     lambda: fl.Residual(fl.LayerNorm(6), fl.Linear(6, 6)), [((2, 3, 6), F)])
case("sum", {"type": "Sum", "children": [lin(5, 4), lin(5, 4), {"type": "Chain", "children": [lin(5, 4), {"type": "ReLU"}]}]},
     lambda: fl.Sum(fl.Linear(5, 4), fl.Linear(5, 4), fl.Chain(fl.Linear(5, 4), fl.ReLU())), [((3, 5), F)])
case("parallel", {"type": "Parallel", "children": [lin(4, 2), {"type": "Identity"}, lin(4, 3)]},
     lambda: fl.Parallel(fl.Linear(4, 2), fl.Identity(), fl.Linear(4, 3)), [((2, 4), F)])
case("distribute", {"type": "Distribute", "children": [lin(4, 2), lin(3, 2)]},
     lambda: fl.Distribute(fl.Linear(4, 2), fl.Linear(3, 2)), [((2, 4), F), ((2, 3), F)])
case("concatenate", {"type": "Concatenate", "dim": 1, "children": [lin(4, 2), lin(4, 3)]},
     lambda: fl.Concatenate(fl.Linear(4, 2), fl.Linear(4, 3), dim=1), [((2, 4), F)])
case("matmul", {"type": "Matmul", "children": [lin(4, 4), {"type": "Transpose", "dim0": 1, "dim1": 2}]},
     lambda: fl.Matmul(fl.Linear(4, 4), fl.Transpose(1, 2)), [((2, 3, 4), F)])
case("passthrough_context", {"type": "Chain", "children": [
        {"type": "Passthrough", "children": [lin(4, 4), {"type": "SetContext", "context": "memo", "key": "h"}]},
        {"type": "Multiply", "scale": 2.0},
        {"type": "Parallel", "children": [{"type": "Identity"}, {"type": "UseContext", "context": "memo", "key": "h"}]},
        {"type": "Sum", "children": [{"type": "GetArg", "index": 0}, {"type": "GetArg", "index": 1}]}]},
     lambda: fl.Chain(
         fl.Passthrough(fl.Linear(4, 4), fl.SetContext("memo", "h")),
         fl.Multiply(2.0),
         fl.Parallel(fl.Identity(), fl.UseContext("memo", "h")),
         fl.Sum(fl.GetArg(0), fl.GetArg(1))),
     [((2, 4), F)], contexts={"memo": {"h": "unset"}})
case("use_context_deep", {"type": "Chain", "children": [{"type": "Chain", "children": [{"type": "Chain", "children": [
        {"type": "Chain", "children": [{"type": "Chain", "children": [
            {"type": "Sum", "children": [{"type": "Identity"}, {"type": "UseContext", "context": "cond", "key": "c"}]}]}]}]}]}]},
     lambda: fl.Chain(fl.Chain(fl.Chain(fl.Chain(fl.Chain(fl.Sum(fl.Identity(), fl.UseContext("cond", "c"))))))),
     [((2, 4), F), ((2, 4), F)], contexts={"cond": {"c": 1}},
     call=lambda m, x: m(x[0]))
# Return ends the pass with its input. Refiners 0.4.0 raises an exception that
# no Chain catches (it surfaces as a ChainError), so the reference output is
# what reached the Return: the first layer's.
case("return_early", {"type": "Chain", "children": [lin(4, 3), {"type": "Return"}, lin(3, 2)]},
     lambda: fl.Chain(fl.Linear(4, 3), fl.Return(), fl.Linear(3, 2)), [((2, 4), F)],
     call=lambda m, x: m[0](x[0]))


# LoRA adapters (Refiners' LinearLora / Conv2dLora / LoraAdapter), injected.
# The Go description is the tree after injection: a LoraAdapter lists its
# target first, then its branches.
from refiners.fluxion.adapters.lora import Conv2dLora, LinearLora, LoraAdapter


def injected(chain, path, *loras):
    LoraAdapter(chain.layer(path, fl.WeightedModule), *loras).inject(chain)
    return chain


def lora_desc(kind, **args):
    return {"type": kind, **args}


case("lora_linear_two_scales",
     {"type": "Chain", "children": [
         {"type": "LoraAdapter", "children": [lin(4, 8),
             lora_desc("LinearLora", name="a", in_features=4, out_features=8, rank=2, scale=0.5),
             lora_desc("LinearLora", name="b", in_features=4, out_features=8, rank=3, scale=2.0)]},
         {"type": "SiLU"}, lin(8, 8)]},
     lambda: injected(fl.Chain(fl.Linear(4, 8), fl.SiLU(), fl.Linear(8, 8)), "Linear_1",
                      LinearLora("a", 4, 8, rank=2, scale=0.5), LinearLora("b", 4, 8, rank=3, scale=2.0)),
     [((3, 4), F)])
case("lora_conv2d",
     {"type": "Chain", "children": [
         {"type": "LoraAdapter", "children": [
             {"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1},
             lora_desc("Conv2dLora", name="c", in_channels=3, out_channels=4, rank=2, scale=1.5),
             lora_desc("Conv2dLora", name="d", in_channels=3, out_channels=4, rank=3, kernel_size=[3, 1], padding=[1, 0])]},
         {"type": "SiLU"}]},
     lambda: injected(fl.Chain(fl.Conv2d(3, 4, 3, padding=1), fl.SiLU()), "Conv2d",
                      Conv2dLora("c", 3, 4, rank=2, scale=1.5),
                      Conv2dLora("d", 3, 4, rank=3, kernel_size=(3, 1), padding=(1, 0))),
     [((2, 3, 6, 5), F)])
case("lora_conv2d_1x1",
     {"type": "LoraAdapter", "children": [
         {"type": "Conv2d", "in_channels": 4, "out_channels": 6, "kernel_size": 1},
         lora_desc("Conv2dLora", name="e", in_channels=4, out_channels=6, rank=2, kernel_size=[1, 1], padding=[0, 0])]},
     lambda: LoraAdapter(fl.Conv2d(4, 6, 1), Conv2dLora("e", 4, 6, rank=2, kernel_size=(1, 1), padding=(0, 0))),
     [((1, 4, 3, 3), F)])


# Layers of Refiners' Segment Anything (models/sam on the Go side) and the
# generic MultiLinear its mask decoder uses.
from refiners.foundationals.segment_anything.image_encoder import (
    RelativePositionAttention,
    WindowMerge,
    WindowPartition,
)
from refiners.foundationals.segment_anything.prompt_encoder import PointTypeEmbedding


def with_window(size):
    """Runs a chain with Refiners' window_partition context set, as
    TransformerLayer.init_context does."""

    def call(m, x):
        m.set_context("window_partition", {"window_size": size})
        return m(*x)

    return call


case("multi_linear", {"type": "MultiLinear", "input_dim": 6, "output_dim": 4, "inner_dim": 8, "num_layers": 3},
     lambda: fl.MultiLinear(input_dim=6, output_dim=4, inner_dim=8, num_layers=3), [((2, 3, 6), F)])
case("multi_linear_one_layer", {"type": "MultiLinear", "input_dim": 5, "output_dim": 3, "inner_dim": 5, "num_layers": 1},
     lambda: fl.MultiLinear(input_dim=5, output_dim=3, inner_dim=5, num_layers=1), [((4, 5), F)])
case("relative_position_attention", {"type": "RelativePositionAttention", "embedding_dim": 8, "num_heads": 2, "spatial_size": [3, 3]},
     lambda: RelativePositionAttention(embedding_dim=8, num_heads=2, spatial_size=(3, 3)), [((2, 3, 3, 24), F)])
case("relative_position_attention_1head", {"type": "RelativePositionAttention", "embedding_dim": 4, "num_heads": 1, "spatial_size": [5, 5]},
     lambda: RelativePositionAttention(embedding_dim=4, num_heads=1, spatial_size=(5, 5)), [((1, 5, 5, 12), F)])
case("window_partition", {"type": "Chain", "children": [{"type": "WindowPartition", "window_size": 3}]},
     lambda: fl.Chain(WindowPartition()), [((2, 5, 7, 4), F)], call=with_window(3))
case("window_partition_merge", {"type": "Chain", "children": [
        {"type": "WindowPartition", "window_size": 3}, lin(4, 4), {"type": "WindowMerge", "window_size": 3}]},
     lambda: fl.Chain(WindowPartition(), fl.Linear(4, 4), WindowMerge()), [((2, 5, 7, 4), F)], call=with_window(3))
case("window_partition_merge_exact", {"type": "Chain", "children": [
        {"type": "WindowPartition", "window_size": 2}, {"type": "Multiply", "scale": 3.0}, {"type": "WindowMerge", "window_size": 2}]},
     lambda: fl.Chain(WindowPartition(), fl.Multiply(3.0), WindowMerge()), [((1, 4, 6, 3), F)], call=with_window(2))


def point_types(m, x):
    """Refiners fills a float32 zeros tensor with weight rows, which fails
    for float64 weights (index_put dtypes differ). The layer only copies
    rows, so its float64 twin is the float32 run (on the twin's weights,
    float32 values upcast exactly) upcast: exact."""
    if m.weight.dtype == torch.float64:
        return m.to(dtype=torch.float32)(x[0]).to(torch.float64)
    return m(x[0])


case("point_type_embedding", {"type": "PointTypeEmbedding", "embedding_dim": 6},
     lambda: PointTypeEmbedding(embedding_dim=6), [((2, 9), "int:7")], call=point_types)

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "testdata" / "layers"
    generate(out)
