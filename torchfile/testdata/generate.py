"""Test files for package torchfile, written by PyTorch itself.

    conformance/.venv/bin/python torchfile/testdata/generate.py

state_dict.pt     torch.save (zip) of a dict covering every storage type the
                  reader knows, a Parameter, a transposed (non-contiguous)
                  tensor, two tensors sharing one storage at different
                  offsets, a 0-d tensor, an empty tensor, a nested dict and a
                  Linear's state dict (an OrderedDict with _metadata, set by
                  BUILD).
legacy.pt         the same object with _use_new_zipfile_serialization=False
                  (the pre-1.6 format).
checkpoint.ckpt   a Lightning-style checkpoint: {"state_dict": ..., plus
                  global_step, epoch, strings, floats, a big integer, bytes,
                  lists, None, and an instance of a callback class
                  (pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint,
                  declared here, never imported) that the reader must refuse
                  unless declared inert}.
compressed.pt     state_dict.pt re-zipped with deflate (the reader inflates).
expected.safetensors  every tensor of state_dict.pt, contiguous, under the
                  same dotted keys (nested dicts joined with ".").
hostile_system.pt a torch.save (zip) whose pickle calls os.system to create
                  /tmp/refiners-go-torchfile-pwned.
hostile_eval.pkl  a bare pickle (protocol 2) calling builtins.eval.
hostile_popen.pt  a torch.save whose pickle (protocol 4, STACK_GLOBAL)
                  calls subprocess.Popen.
hostile_tensor.pt a tensor whose size reaches past its storage (a reader
                  must not read out of bounds).
"""

import collections
import io
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
SENTINEL = "/tmp/refiners-go-torchfile-pwned"


def tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    shared = torch.randn(10, generator=g)
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 3, generator=g))
        lin.bias.copy_(torch.randn(2, generator=g))
    return {
        "f32": torch.randn(2, 3, generator=g),
        "f16": torch.randn(3, 2, generator=g).half(),
        "bf16": torch.randn(5, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, generator=g).double(),
        "i64": torch.arange(-3, 4, dtype=torch.int64),
        "i32": torch.arange(-2, 2, dtype=torch.int32),
        "i16": torch.arange(-2, 2, dtype=torch.int16),
        "i8": torch.arange(-2, 2, dtype=torch.int8),
        "u8": torch.arange(0, 250, 50, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
        "transposed": base.t(),
        "strided": base[:, ::2],
        "view_a": shared[2:5],
        "view_b": shared[5:].reshape(1, 5),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
        "nested": {"inner": {"x": torch.randn(3, generator=g)}, "list": [torch.ones(2), torch.zeros(1)]},
        "linear": lin.state_dict(),
    }


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif isinstance(v, list):
            out.update(flat({str(i): x for i, x in enumerate(v)}, key + "."))
        else:
            out[key] = v.detach().contiguous().clone()
    return out


class ModelCheckpoint:
    """Stands for Lightning's callback: pickled by reference to its class."""

    def __init__(self):
        self.monitor = "val/loss"
        self.save_top_k = 3


ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
ModelCheckpoint.__qualname__ = "ModelCheckpoint"


class System:
    def __reduce__(self):
        return (os.system, (f"touch {SENTINEL}",))


class Eval:
    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {SENTINEL}')",))


class Popen:
    def __reduce__(self):
        return (subprocess.Popen, (["touch", SENTINEL],))


def main():
    sd = tensors()
    torch.save(sd, HERE / "state_dict.pt")
    torch.save(sd, HERE / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(flat(sd), HERE / "expected.safetensors")

    # Re-zip with deflate: same entries, compressed.
    src = zipfile.ZipFile(HERE / "state_dict.pt")
    with zipfile.ZipFile(HERE / "compressed.pt", "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))

    # The callback class must be importable for pickle to write it.
    import sys
    import types
    for name in ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint = ModelCheckpoint
    ckpt = {
        "state_dict": {"model.w": torch.randn(2, 2), "model.b": torch.zeros(2)},
        "global_step": 840000,
        "epoch": 6,
        "pytorch-lightning_version": "1.4.2",
        "lr": 1.5e-4,
        "big": 2**70,
        "neg": -(2**40),
        "blob": b"\x00\xffbytes",
        "flags": [True, False, None],
        "pair": (1, "two"),
        "callbacks": {"ModelCheckpoint": ModelCheckpoint()},
    }
    torch.save(ckpt, HERE / "checkpoint.ckpt")

    torch.save({"x": System()}, HERE / "hostile_system.pt")
    (HERE / "hostile_eval.pkl").write_bytes(pickle.dumps({"x": Eval()}, protocol=2))
    torch.save({"x": Popen()}, HERE / "hostile_popen.pt", pickle_protocol=4)

    # A tensor claiming more elements than its storage: write a good file,
    # then patch the pickle's size tuple (4, 6) -> (40, 6).
    buf = io.BytesIO()
    torch.save({"t": torch.zeros(4, 6)}, buf)
    zin = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(HERE / "hostile_tensor.pt", "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                old = b"K\x04K\x06\x86"  # BININT1 4, BININT1 6, TUPLE2
                assert data.count(old) == 1
                data = data.replace(old, b"K(K\x06\x86")
            zout.writestr(info, data)
    for p in sorted(HERE.iterdir()):
        if p.suffix != ".py":
            print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
