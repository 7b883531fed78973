"""Half-precision spec cases: the tiny U-Net, VAE decoder and CLIP text
encoder cases of testdata/specs, run by the reference in bfloat16.

Each case reuses the float32 case's parameters and inputs (read from its
golden file), rounds them to bfloat16, and runs Refiners 0.4.0's own model
in bfloat16 (output.N, stored in bfloat16) and, on the very same rounded
weights and inputs widened exactly, in float64 (ref64.N). So the yardstick
is the reference's own bfloat16 error against the exact result of the
computation Go is asked to do, and the same ratio rule (ratio <= 10)
applies. Float16 has no CPU kernels in libtorch 2.1 (convolution, norms,
matmul), so there is no float16 CPU case: it is for GPUs. scripts/gpu-check.sh
writes CUDA vectors (float32 and float16, the reference run on the GPU) to a
scratch folder with --device cuda --dtypes float32,float16 --out DIR.

    conformance/.venv/bin/python conformance/generate_half.py [--device cuda] [--dtypes bfloat16] [--out DIR]
"""

import argparse

import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from golden import float64_twin, reference_error_note, reference_tensors, upcast  # noqa: E402
import generate_clip_text as clip  # noqa: E402
import generate_sd15_unet as unet  # noqa: E402
import generate_sd15_vae as vae  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def builders():
    tiny_vae = [8, 16, 20, 20], 4
    return {
        "sd15_unet_tiny": lambda: unet.sized_unet(unet.TINY),
        "sd15_vae_decoder_tiny": lambda: vae.decoder(*tiny_vae),
        "clip_text_tiny": lambda: clip.without_tokenizer(clip.CLIPTextEncoder(**clip.TINY, use_quick_gelu=True)),
    }


def run(model, tensors, dtype, device):
    """Runs model on the case's inputs (floating ones cast to dtype) on device."""
    cast = lambda t: (t.to(dtype) if t.is_floating_point() else t).to(device)  # noqa: E731
    if hasattr(model, "set_timestep"):
        model.set_timestep(tensors["context.diffusion.timestep"].to(device))
        model.set_clip_text_embedding(cast(tensors["context.cross_attention_block.clip_text_embedding"]))
    return model(cast(tensors["input.0"]))


def generate(name, build, src_dir, out_dir, dtype_name, device):
    dtype = DTYPES[dtype_name]
    tensors, meta = read(src_dir / f"{name}.safetensors")
    model = build().eval()
    params = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
    model.load_state_dict(params, strict=True)
    model = model.to(dtype=dtype)
    with torch.no_grad():
        twin = float64_twin(model)  # the rounded weights, widened exactly
        inputs64 = {k: (upcast(v.to(dtype)) if v.is_floating_point() else v) for k, v in tensors.items()}
        model, twin = model.to(device=device), twin.to(device=device)
        y = run(model, tensors, dtype, device).cpu()
        y64 = run(twin, inputs64, torch.float64, device).cpu()
    out = {f"param.{k}": v.contiguous().cpu() for k, v in model.state_dict().items()}
    for k, v in tensors.items():
        if k.startswith("input.") or k.startswith("context."):
            out[k] = (v.to(dtype) if v.is_floating_point() else v).contiguous()
    out.update(reference_tensors([y], [y64]))
    new_meta = {
        "spec": meta["spec"],
        "overrides": meta["overrides"],
        "dtype": dtype_name,
        "reference": f"torch {torch.__version__}, {meta['reference'].split(', ', 1)[-1]}, in {dtype_name} on {device}",
        **reference_error_note([y], [y64]),
    }
    path = out_dir / f"{name}_{dtype_name}.safetensors"
    save_file(out, str(path), metadata=new_meta)
    print(f"{path.name}: output {tuple(y.shape)} {y.dtype}, own {dtype_name} error {(y.double() - y64).abs().max():.3g}, "
          f"|y| max {y.abs().max():.3g}, {path.stat().st_size / 1e3:.0f} KB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="bfloat16", help="comma-separated: bfloat16, float16, float32")
    ap.add_argument("--out", default=None, help="output folder (default: testdata/specs)")
    a = ap.parse_args()
    here = Path(__file__).parent / "testdata" / "specs"
    out = Path(a.out) if a.out else here
    out.mkdir(parents=True, exist_ok=True)
    for dtype_name in a.dtypes.split(","):
        for name, build in builders().items():
            generate(name, build, here, out, dtype_name, a.device)
