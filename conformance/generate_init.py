"""Golden vectors for `refinersd init` (core.InitLikeTorch): the parameters
a Refiners 0.4.0 model gets from its constructor after torch.manual_seed.

PyTorch draws them from its CPU generator in construction order: Linear and
Conv weights kaiming_uniform_(a=sqrt(5)), their biases uniform_(+-1/sqrt(fan_in)),
Embedding and fl.Parameter standard normal, norms ones and zeros. Normal draws
depend on libtorch's CPU kernel (ATEN_CPU_CAPABILITY), so the script runs
itself once per kernel this CPU has and writes testdata/init/<capability>.safetensors
(keys param.<state-dict key>; exact values, compared bit for bit: there is no
arithmetic to have an error, hence no float64 twin).

The model is the one of conformance/init_test.go (initSpec), key for key.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import refiners.fluxion.layers as fl

SEEDS = [0, 7]
TORCH_NAMES = {"default": "NO AVX", "avx2": "AVX2", "avx512": "AVX512"}


def capabilities():
    script = Path(__file__).resolve().parent.parent / "scripts" / "cpu-capabilities.sh"
    return subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout.split()


def model():
    return fl.Chain(
        fl.Conv2d(3, 8, 3, padding=1),
        fl.GroupNorm(8, 2),
        fl.SiLU(),
        fl.ConvTranspose2d(8, 4, 2, stride=2),
        fl.Flatten(start_dim=1),
        fl.Linear(4 * 16 * 16, 10),
        fl.LayerNorm(10),
        fl.Residual(fl.Parameter(10)),
        fl.Chain(fl.Linear(10, 20, bias=False), fl.Embedding(20, 6)),
    )


def generate(out_dir):
    capability = os.environ["ATEN_CPU_CAPABILITY"]
    torch_name = torch.backends.cpu.get_cpu_capability()
    assert torch_name == TORCH_NAMES[capability], f"ATEN_CPU_CAPABILITY={capability} but torch runs {torch_name}"
    tensors = {}
    for seed in SEEDS:
        torch.manual_seed(seed)
        for key, value in model().state_dict().items():
            tensors[f"seed{seed}.{key}"] = value.clone().contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{capability}.safetensors"
    meta = {"capability": capability, "torch_capability": torch_name,
            "reference": f"torch {torch.__version__}, refiners 0.4.0 constructors after torch.manual_seed",
            "seeds": json.dumps(SEEDS)}
    save_file(tensors, str(path), metadata=meta)
    print(f"wrote {path} ({len(tensors)} tensors)")


def main():
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "testdata" / "init"
    if os.environ.get("REFINERS_GOLDEN_CHILD"):
        generate(out_dir)
        return
    for cap in capabilities():
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, REFINERS_GOLDEN_CHILD="1")
        subprocess.run([sys.executable, __file__, str(out_dir)], env=env, check=True)


if __name__ == "__main__":
    main()
