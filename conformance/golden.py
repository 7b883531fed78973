"""Shared helpers of the golden-vector generators: the reference's tree
print and the safetensors layout the Go runners read (see README.md)."""

import json
from pathlib import Path

import refiners.fluxion.layers as fl
import torch
from safetensors.torch import save_file


def tree_print(module):
    """The whole tree, as Refiners prints it (repr stops at depth 7)."""
    tree = fl.module.ModuleTree(module)
    return tree._generate_tree_repr(tree.root, is_root=True, depth=-1)


def save_spec_case(out_dir, name, *, spec, overrides, model, inputs, outputs, reference, tree=None, atol="1e-5", rtol="1e-4"):
    """Writes one spec case: param.<key> for the model's state dict, the
    given inputs (keys input.N and context.<name>.<key>), output.N, and the
    metadata the Go runner reads. Returns the file's path."""
    tensors = {f"param.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors.update({k: v.contiguous() for k, v in inputs.items()})
    tensors.update({f"output.{i}": y.detach().clone().contiguous() for i, y in enumerate(outputs)})
    meta = {
        "spec": spec,
        "overrides": json.dumps(overrides),
        "dtype": "float32",
        "atol": atol,
        "rtol": rtol,
        "reference": f"torch {torch.__version__}, {reference}",
    }
    if tree is not None:
        meta["tree"] = tree
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path
