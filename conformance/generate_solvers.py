"""Golden vectors for the diffusion solvers and seeded noise, from Refiners
0.4.0's DPMSolver, DDIM and Euler and torch 2.1.2's CPU randn.

Both depend on libtorch's CPU kernel (ATEN_CPU_CAPABILITY): randn draws
differently for 16 elements or more under AVX2, and the noise schedule's
float32 values (linspace, log) differ in the last bit. So the generator runs
itself once per kernel, each in a child process with ATEN_CPU_CAPABILITY
set, and writes one file per kernel, testdata/solvers/<capability>.safetensors:

- ``schedule.<buffer>``: the solver's float32 schedule buffers (exact);
- ``randn.<n>``: torch.randn(shape, dtype) after torch.manual_seed(seed),
  with seed, shape and dtype in the metadata (``randn``, JSON); the
  generator checks that torch.Generator().manual_seed(seed) draws the same;
- per solver case (metadata ``cases``, JSON: solver, steps, first step):
  ``<case>.timesteps`` (int64 for DPM and DDIM, float32 for Euler);
  inputs ``input.<case>.x`` (the initial latents, or the clean latents for
  img2img cases) and ``input.<case>.noise`` (the noise img2img adds) and
  ``input.<case>.eps.<step>`` (the predicted noise at each step);
  outputs ``output.<case>.<what>`` in float32 with their float64 twins
  ``ref64.<case>.<what>``: ``init`` (the initial latents: add_noise at the
  first step, then scale_model_input(x, -1)), ``step.<k>`` (every step's
  output, each step fed the previous output of the same precision),
  ``scale.<k>`` (scale_model_input at each step, Euler only) and
  ``sigma`` (Euler's init_noise_sigma).

The float64 twin is the same solver through golden.float64_twin (a copy
converted with .to(dtype=float64): Refiners' Solver.to widens its float32
schedule buffers exactly), fed the same inputs widened exactly
(golden.upcast).

    conformance/.venv/bin/python conformance/generate_solvers.py [OUT_DIR]
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from refiners.foundationals.latent_diffusion.solvers import DDIM, DPMSolver, Euler
from safetensors.torch import save_file

from golden import float64_twin, upcast

SOLVERS = {"dpm": DPMSolver, "ddim": DDIM, "euler": Euler}

# (solver, steps, first step)
CASES = [
    ("dpm", 30, 0),  # Refiners' SD 1.5 default
    ("dpm", 50, 0),
    ("dpm", 20, 7),  # img2img, strength 0.65
    ("dpm", 1, 0),
    ("dpm", 2, 0),
    ("dpm", 2, 1),
    ("dpm", 10, 9),  # img2img that runs only the last step
    ("ddim", 30, 0),
    ("ddim", 50, 0),
    ("ddim", 20, 7),
    ("ddim", 1, 0),
    ("ddim", 2, 0),
    ("ddim", 7, 3),  # 1000 // 7 leaves a remainder
    ("euler", 30, 0),
    ("euler", 20, 7),  # steps from 7 on; Euler cannot add_noise, so txt2img-style input
    ("euler", 1, 0),
    ("euler", 2, 0),
]

# Latents of an odd size: 60 elements, so libtorch's vector loops run
# both their vector body and their scalar tail.
LATENT_SHAPE = (1, 4, 3, 5)

# (seed, shape, dtype). Sizes below 16 use randn's serial path, 16 and
# more its vectorised one (AVX2 differs from the default kernel there).
RANDN = [
    (0, [1], "float32"),
    (42, [7], "float32"),
    (42, [15], "float32"),
    (42, [16], "float32"),
    (42, [17], "float32"),
    (2, [4, 64, 64], "float32"),
    (123456789, [1, 4, 8, 8], "float32"),
    (2**32 + 7, [3, 5], "float32"),
    (2**64 - 1, [33], "float32"),
    (7, [15], "float16"),
    (7, [40], "float16"),
    (7, [40], "bfloat16"),
]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# What torch.backends.cpu.get_cpu_capability() calls each kernel path.
TORCH_NAMES = {"default": "NO AVX", "avx2": "AVX2", "avx512": "AVX512"}


def capabilities():
    """The kernel paths this CPU can take (ATen trusts the variable, so a
    path the CPU lacks would die of an illegal instruction)."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "cpu-capabilities.sh"
    return subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout.split()


def randn_vectors():
    tensors, meta = {}, []
    for i, (seed, shape, dtype) in enumerate(RANDN):
        torch.manual_seed(seed)
        a = torch.randn(shape, dtype=DTYPES[dtype])
        b = torch.randn(shape, dtype=DTYPES[dtype], generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a, b), f"randn {seed} {shape}: the global and a private generator differ"
        tensors[f"randn.{i}"] = a.contiguous()
        meta.append({"seed": str(seed), "shape": shape, "dtype": dtype})
    return tensors, meta


def solver_case(name, kind, steps, first, gen):
    """One solver case in float32 and in float64."""
    tensors = {}
    x = torch.randn(LATENT_SHAPE, generator=gen)
    noise = torch.randn(LATENT_SHAPE, generator=gen)
    eps = {k: torch.randn(LATENT_SHAPE, generator=gen) for k in range(first, steps)}
    tensors[f"input.{name}.x"] = x
    tensors[f"input.{name}.noise"] = noise
    for k, e in eps.items():
        tensors[f"input.{name}.eps.{k}"] = e

    solver = SOLVERS[kind](num_inference_steps=steps, first_inference_step=first)
    # Solver.to converts the schedule buffers (not fl.Module state, so
    # float64_twin's own check sees none of them): check them here.
    twin = float64_twin(solver)
    for buf in ("cumulative_scale_factors", "noise_std", "signal_to_noise_ratios") + (("sigmas",) if kind == "euler" else ()):
        assert getattr(twin, buf).dtype == torch.float64, f"{kind}: {buf} stayed {getattr(twin, buf).dtype} in the float64 twin"
    tensors[f"{name}.timesteps"] = solver.timesteps.clone().contiguous()
    assert solver.timesteps.dtype == (torch.float32 if kind == "euler" else torch.int64)

    def run(sv, cast, prefix):
        out = {}
        xs = cast(x)
        if first > 0 and kind != "euler":  # img2img: Euler cannot add_noise in Refiners 0.4.0
            xs = sv.add_noise(xs, cast(noise), step=first)
        xs = sv.scale_model_input(xs, step=-1)
        out[f"{prefix}.{name}.init"] = xs
        if kind == "euler":
            out[f"{prefix}.{name}.sigma"] = sv.init_noise_sigma.reshape(1).clone()
        for k in sv.inference_steps:
            if kind == "euler":
                out[f"{prefix}.{name}.scale.{k}"] = sv.scale_model_input(xs, step=k)
            xs = sv(xs, predicted_noise=cast(eps[k]), step=k)
            out[f"{prefix}.{name}.step.{k}"] = xs
        return out

    out32 = run(solver, lambda t: t, "output")
    out64 = run(twin, upcast, "ref64")
    for key, y in out32.items():
        y64 = out64["ref64." + key[len("output.") :]]
        assert y.dtype == torch.float32 and y64.dtype == torch.float64, key
        assert y.shape == y64.shape, key
    tensors.update(out32)
    tensors.update(out64)
    return tensors


def generate(out_dir):
    """Writes the file for the kernel this process runs."""
    capability = os.environ["ATEN_CPU_CAPABILITY"]
    torch_name = torch.backends.cpu.get_cpu_capability()
    assert torch_name == TORCH_NAMES[capability], f"ATEN_CPU_CAPABILITY={capability} but torch runs {torch_name}"
    tensors = {}
    solver = DPMSolver(num_inference_steps=30)
    for buf in ("cumulative_scale_factors", "noise_std", "signal_to_noise_ratios"):
        tensors[f"schedule.{buf}"] = getattr(solver, buf).clone()
    randn, randn_meta = randn_vectors()
    tensors.update(randn)
    gen = torch.Generator().manual_seed(20240611)
    cases = []
    for kind, steps, first in CASES:
        name = f"{kind}_{steps}_{first}"
        tensors.update(solver_case(name, kind, steps, first, gen))
        cases.append({"name": name, "solver": kind, "steps": steps, "first_step": first})
    meta = {
        "capability": capability,
        "torch_capability": torch_name,
        "reference": f"torch {torch.__version__}, refiners 0.4.0 (DPMSolver, DDIM, Euler), numpy",
        "cases": json.dumps(cases),
        "randn": json.dumps(randn_meta),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{capability}.safetensors"
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    print(f"wrote {path} ({len(cases)} solver cases, {len(randn_meta)} randn draws)")


def main():
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "testdata" / "solvers"
    if os.environ.get("REFINERS_GOLDEN_CHILD"):
        generate(out_dir)
        return
    for cap in capabilities():
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, REFINERS_GOLDEN_CHILD="1")
        subprocess.run([sys.executable, __file__, str(out_dir)], env=env, check=True)


if __name__ == "__main__":
    main()
