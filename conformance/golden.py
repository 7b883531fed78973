"""Shared helpers of the golden-vector generators: the reference's tree
print, the float64 twin of a reference run, and the safetensors layout the
Go runners read (see README.md)."""

import copy
import json
from pathlib import Path

import refiners.fluxion.layers as fl
import torch
from safetensors.torch import save_file


def tree_print(module):
    """The whole tree, as Refiners prints it (repr stops at depth 7)."""
    tree = fl.module.ModuleTree(module)
    return tree._generate_tree_repr(tree.root, is_root=True, depth=-1)


def upcast(x):
    """x in float64 when it is a floating tensor (exactly: every float32,
    float16 and bfloat16 value is a float64 value), unchanged otherwise.
    Lists, tuples and dicts are upcast element by element."""
    if torch.is_tensor(x):
        return x.to(torch.float64) if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(upcast(v) for v in x)
    if isinstance(x, dict):
        return {k: upcast(v) for k, v in x.items()}
    return x


def float64_twin(module):
    """A copy of module computing in float64 on exactly the same weights.
    Its outputs are the 'exact' results the Go runner measures both
    float32 implementations against (ref64.N): the reference's own float32
    error is |output.N - ref64.N|."""
    twin = copy.deepcopy(module)
    twin.to(dtype=torch.float64)
    for name, t in list(twin.state_dict().items()):
        if t.is_floating_point():
            assert t.dtype == torch.float64, f"{name} stayed {t.dtype} in the float64 twin"
    return twin


def _keyed(outputs):
    """(key, tensor) pairs: list positions (0, 1, ...) or a dict's keys."""
    return list(outputs.items()) if isinstance(outputs, dict) else [(str(i), y) for i, y in enumerate(outputs)]


def reference_tensors(outputs, outputs64):
    """output.<key> (the reference in the case's dtype) and ref64.<key> (its
    float64 twin), for the runner's error model; outputs and outputs64 are
    lists (keys 0, 1, ...) or dicts with the same keys. Integer outputs have
    no twin: they are compared exactly."""
    pairs, pairs64 = _keyed(outputs), dict(_keyed(outputs64))
    assert [k for k, _ in pairs] == list(pairs64), "one float64 output per output"
    tensors = {}
    for key, y in pairs:
        y64 = pairs64[key]
        tensors[f"output.{key}"] = y.detach().clone().contiguous()
        if y.is_floating_point():
            assert y64.dtype == torch.float64, f"output {key}: the float64 twin computed in {y64.dtype}"
            assert y64.shape == y.shape, f"output {key}: float64 twin has shape {tuple(y64.shape)}, want {tuple(y.shape)}"
            tensors[f"ref64.{key}"] = y64.detach().clone().contiguous()
    return tensors


def reference_error_note(outputs, outputs64):
    """Metadata recording each output's own float error (informative: the Go
    runner recomputes it from the tensors)."""
    pairs64 = dict(_keyed(outputs64))
    return {
        f"ref_err.{key}": f"{(y.double() - pairs64[key]).abs().max().item():.3g}"
        for key, y in _keyed(outputs)
        if y.is_floating_point() and y.numel() > 0
    }


def save_spec_case(out_dir, name, *, spec, overrides, model, inputs, outputs, outputs64, reference, tree=None):
    """Writes one spec case: param.<key> for the model's state dict, the
    given inputs (keys input.N and context.<name>.<key>), output.N and
    ref64.N, and the metadata the Go runner reads. Returns the file's path."""
    tensors = {f"param.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors.update({k: v.contiguous() for k, v in inputs.items()})
    tensors.update(reference_tensors(outputs, outputs64))
    meta = {
        "spec": spec,
        "overrides": json.dumps(overrides),
        "dtype": "float32",
        "reference": f"torch {torch.__version__}, {reference}",
        **reference_error_note(outputs, outputs64),
    }
    if tree is not None:
        meta["tree"] = tree
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path
