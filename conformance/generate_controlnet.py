"""Golden vectors for SD 1.5 ControlNets (specs/sd15_controlnet.yaml put into
specs/sd15_unet.yaml): Refiners' SD1ControlnetAdapter on an SD1UNet.

    conformance/.venv/bin/python conformance/generate_controlnet.py

Tiny (committed, testdata/controlnet/sd15_controlnet_tiny.safetensors): the
U-Net is generate_sd15_unet.py's sized SD1UNet; the ControlNet is Refiners'
Controlnet built the same way from its own classes with the U-Net's sizes
(Controlnet hard-codes the full widths and the condition encoder's
16/32/96/256 -> 320). Before using it, the script checks that at the real
sizes it gives exactly Controlnet's state-dict keys, shapes and tree print.

One file holds: param.unet.<key> (the U-Net), param.cn.<name>.<key> (each
ControlNet), the inputs (input.0 latents, context.* as in the U-Net case,
context.controlnet.condition_<name>: float [1, 3, 8h, 8w] in [0, 1],
broadcast over the batch of 2 as in Refiners' pipeline), and three outputs
with their float64 twins: output.base (the U-Net alone), output.one (with
ControlNet "a" at scale 0.8) and output.two (with "a" then "b" at scale
1.3, each inserted at index 0 by SD1ControlnetAdapter.inject). The float64
twins are built from fresh adapters on a float64 copy of the U-Net (the
store Lambdas close over their Controlnet, so a deep copy would write into
the float32 model's residuals).

Metadata: unet_overrides and controlnet_overrides (JSON: the spec
parameters), controlnets (JSON list of {name, scale} in insertion order).
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import refiners.fluxion.layers as fl
import torch
from refiners.foundationals.latent_diffusion.range_adapter import RangeAdapter2d, RangeEncoder
from refiners.foundationals.latent_diffusion.stable_diffusion_1 import controlnet as cn
from refiners.foundationals.latent_diffusion.unet import ResidualBlock
from safetensors.torch import save_file

from generate_sd15_unet import FULL, TINY, randomise, sized_unet
from golden import float64_twin, reference_error_note, reference_tensors, tree_print, upcast

FULL_COND = dict(condition_channels_1=16, condition_channels_2=32, condition_channels_3=96, condition_channels_4=256)
TINY_COND = dict(condition_channels_1=4, condition_channels_2=6, condition_channels_3=8, condition_channels_4=8)
NAMES = [("a", 0.8), ("b", 1.3)]


def sized_controlnet(unet, p, cond, name, scale):
    """Refiners' Controlnet(name, scale) with every size a parameter: the
    same construction as Controlnet.__init__, from the sized U-Net's own
    DownBlocks and MiddleBlock classes (fresh instances: no accumulators,
    no range adapters yet)."""
    p = SimpleNamespace(**p)
    widths = (cond["condition_channels_1"], cond["condition_channels_2"], cond["condition_channels_3"],
              cond["condition_channels_4"])

    class TimestepEncoder(fl.Passthrough):
        def __init__(self, context_key):
            super().__init__(
                fl.UseContext("diffusion", "timestep"),
                RangeEncoder(p.sinusoidal_embedding_dim, p.timestep_embedding_dim),
                fl.SetContext("range_adapter", context_key),
            )

    class ConditionEncoder(cn.ConditionEncoder):
        def __init__(self):
            self.out_channels = widths
            fl.Chain.__init__(
                self,
                fl.Chain(fl.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1), fl.SiLU()),
                *(
                    fl.Chain(
                        fl.Conv2d(widths[i], widths[i], kernel_size=3, padding=1),
                        fl.SiLU(),
                        fl.Conv2d(widths[i], widths[i + 1], kernel_size=3, stride=2, padding=1),
                        fl.SiLU(),
                    )
                    for i in range(len(widths) - 1)
                ),
                fl.Conv2d(widths[-1], p.channels_1, kernel_size=3, padding=1),
            )

    DownBlocks = type(unet.layer("DownBlocks", fl.Chain))
    MiddleBlock = type(unet.layer("Sum", fl.Chain).layer("MiddleBlock", fl.Chain))

    class Controlnet(cn.Controlnet):
        def __init__(self, name: str, scale: float = 1.0):
            self.name = name
            self.scale = scale
            fl.Passthrough.__init__(
                self,
                TimestepEncoder(context_key=f"timestep_embedding_{name}"),
                fl.Slicing(dim=1, end=4),
                DownBlocks(in_channels=4),
                MiddleBlock(),
            )
            # As Controlnet.__init__ does.
            self.layer(("DownBlocks", 0), fl.Chain).append(
                fl.Residual(fl.UseContext("controlnet", f"condition_{name}"), ConditionEncoder()),
            )
            for residual_block in self.layers(ResidualBlock):
                chain = residual_block.layer("Chain", fl.Chain)
                RangeAdapter2d(
                    target=chain.layer("Conv2d_1", fl.Conv2d),
                    channels=residual_block.out_channels,
                    embedding_dim=p.timestep_embedding_dim,
                    context_key=f"timestep_embedding_{name}",
                ).inject(chain)
            for n, block in enumerate(self.layer("DownBlocks", fl.Chain)):
                out_channels = block[0].out_channels
                block.append(fl.Passthrough(fl.Conv2d(out_channels, out_channels, kernel_size=1),
                                            fl.Lambda(self._store_nth_residual(n))))
            self.layer("MiddleBlock", fl.Chain).append(
                fl.Passthrough(fl.Conv2d(p.channels_3, p.channels_3, kernel_size=1),
                               fl.Lambda(self._store_nth_residual(12))))

    return Controlnet(name, scale)


class Adapter(cn.SD1ControlnetAdapter):
    """SD1ControlnetAdapter around a given (sized) Controlnet: the same
    inject/eject, the constructor without Controlnet's hard-coded sizes."""

    def __init__(self, target, controlnet):
        self.name = controlnet.name
        self._controlnet = [controlnet]
        with self.setup_adapter(target):
            fl.Chain.__init__(self, target)


def check_sized_controlnet():
    with torch.device("meta"):
        unet = sized_unet(FULL)
        ours, theirs = sized_controlnet(unet, FULL, FULL_COND, "x", 1.0), cn.Controlnet(name="x")
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert a == b, f"state dicts differ: {sorted(set(a.items()) ^ set(b.items()))[:10]}"
    assert list(a) == list(b), "state-dict key order differs"
    assert tree_print(ours) == tree_print(theirs), "tree prints differ"
    print(f"sized Controlnet at full size matches Controlnet: {len(a)} tensors")


def run(unet, x, t, emb, conds, dtype):
    unet.set_timestep(t)
    unet.set_clip_text_embedding(emb.to(dtype))
    for name, c in conds.items():
        unet.set_context("controlnet", {f"condition_{name}": c.to(dtype)})
    return unet(x.to(dtype))


def generate(out_dir, params, cond_params, latents_shape, tokens, timestep):
    gen = torch.Generator().manual_seed(13)
    unet = sized_unet(params).eval()
    randomise(unet, gen)
    nets = {}
    for name, scale in NAMES:
        c = sized_controlnet(unet, params, cond_params, name, scale).eval()
        randomise(c, gen)
        nets[name] = c
    batch, _, h, w = latents_shape
    x = torch.randn(latents_shape, generator=gen)
    emb = torch.randn(batch, tokens, params["clip_embedding_dim"], generator=gen)
    t = torch.tensor([timestep], dtype=torch.int64)
    conds = {name: torch.rand(1, 3, 8 * h, 8 * w, generator=gen) for name, _ in NAMES}

    def outputs(model, controlnets, dtype):
        out = {}
        with torch.no_grad():
            out["base"] = run(model, x, t, emb, {}, dtype)
            adapters = []
            for key, (name, _) in zip(["one", "two"], NAMES):
                a = Adapter(model, controlnets[name]).inject()
                adapters.append(a)
                out[key] = run(model, x, t, emb, {n: conds[n] for n, _ in NAMES[:len(adapters)]}, dtype)
            for a in reversed(adapters):
                a.eject()
            again = run(model, x, t, emb, {}, dtype)
            assert torch.equal(again, out["base"]), "eject did not restore the base output"
        return out

    y = outputs(unet, nets, torch.float32)
    unet64 = sized_unet(params).eval()
    unet64.load_state_dict(unet.state_dict())
    unet64.to(dtype=torch.float64)
    nets64 = {}
    for name, scale in NAMES:
        c = sized_controlnet(unet64, params, cond_params, name, scale).eval()
        c.load_state_dict(nets[name].state_dict())
        nets64[name] = c.to(dtype=torch.float64)
    y64 = outputs(unet64, nets64, torch.float64)

    tensors = {f"param.unet.{k}": v.contiguous() for k, v in unet.state_dict().items()}
    for name, c in nets.items():
        tensors.update({f"param.cn.{name}.{k}": v.contiguous() for k, v in c.state_dict().items()})
    tensors["input.0"] = x
    tensors["context.diffusion.timestep"] = t
    tensors["context.cross_attention_block.clip_text_embedding"] = emb
    for name, c in conds.items():
        tensors[f"context.controlnet.condition_{name}"] = c
    tensors.update(reference_tensors(y, y64))
    strs = lambda d: {k: str(v) for k, v in d.items()}
    meta = {
        "unet_spec": "specs/sd15_unet.yaml",
        "controlnet_spec": "specs/sd15_controlnet.yaml",
        "unet_overrides": json.dumps(strs(params)),
        # The ControlNet spec has the U-Net's sizes but no out_channels.
        "controlnet_overrides": json.dumps(strs({**{k: v for k, v in params.items() if k != "out_channels"}, **cond_params})),
        "controlnets": json.dumps([{"name": n, "scale": s} for n, s in NAMES]),
        "dtype": "float32",
        "reference": f"torch {torch.__version__}, refiners 0.4.0 SD1ControlnetAdapter on SD1UNet",
        **reference_error_note(y, y64),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "sd15_controlnet_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    for k in y:
        print(f"{k}: std {y[k].std():.3f}, own float32 error {(y[k].double() - y64[k]).abs().max():.3g}, "
              f"change from base {(y[k] - y['base']).abs().max():.3g}")
    print(f"{path}: {path.stat().st_size / 1e3:.0f} KB")




def generate_diffusers(out_dir):
    """A diffusers ControlNetModel added into a diffusers UNet2DConditionModel
    (testdata/convert's tiny pipeline U-Net and ControlNet, written by
    generate_convert.py): down_block_res_samples and mid_block_res_sample
    of controlnet(x, t, emb, controlnet_cond, conditioning_scale) passed to
    unet(..., down_block_additional_residuals, mid_block_additional_residual).
    Outputs: base (the U-Net alone), one (the ControlNet at scale 0.7 on
    condition c1), two (diffusers' MultiControlNetModel sum: the same
    ControlNet twice, at 0.7 on c1 and at 1.2 on c2). Conditions are a batch
    of 2 (a different image per row). The Go side converts the U-Net with
    the Go converter and plans the ControlNet file through the plugin.
    testdata/controlnet/diffusers/tiny.safetensors holds the inputs
    (input.0, context.*, condition.c1/c2) and outputs, no weights."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    src = Path(__file__).parent / "testdata" / "convert"
    unet = UNet2DConditionModel.from_pretrained(src / "pipeline" / "unet").eval()
    net = ControlNetModel.from_pretrained(src / "controlnet").eval()
    gen = torch.Generator().manual_seed(29)
    h, w = 6, 8
    x = torch.randn(2, 4, h, w, generator=gen)
    emb = torch.randn(2, 5, unet.config.cross_attention_dim, generator=gen)
    t = torch.tensor([250], dtype=torch.int64)
    conds = {"c1": torch.rand(2, 3, 8 * h, 8 * w, generator=gen), "c2": torch.rand(2, 3, 8 * h, 8 * w, generator=gen)}
    uses = {"base": [], "one": [("c1", 0.7)], "two": [("c1", 0.7), ("c2", 1.2)]}

    def outputs(unet, net, dtype):
        out = {}
        with torch.no_grad():
            for key, use in uses.items():
                down, mid = None, None
                for c, scale in use:
                    d, m = net(x.to(dtype), t, encoder_hidden_states=emb.to(dtype), controlnet_cond=conds[c].to(dtype),
                               conditioning_scale=scale, return_dict=False)
                    if down is None:
                        down, mid = list(d), m
                    else:  # MultiControlNetModel: the residuals add up
                        down = [a + b for a, b in zip(down, d)]
                        mid = mid + m
                out[key] = unet(x.to(dtype), t, encoder_hidden_states=emb.to(dtype), down_block_additional_residuals=down,
                                mid_block_additional_residual=mid, return_dict=False)[0]
        return out

    y = outputs(unet, net, torch.float32)
    y64 = outputs(float64_twin(unet), float64_twin(net), torch.float64)
    tensors = {"input.0": x, "context.diffusion.timestep": t, "context.cross_attention_block.clip_text_embedding": emb}
    tensors.update({f"condition.{k}": v for k, v in conds.items()})
    tensors.update(reference_tensors(y, y64))
    meta = {
        "unet": "convert/pipeline/unet",
        "controlnet": "convert/controlnet/diffusion_pytorch_model.safetensors",
        "uses": json.dumps(uses),
        "dtype": "float32",
        "reference": f"torch {torch.__version__}, diffusers 0.27.2 ControlNetModel + UNet2DConditionModel",
        **reference_error_note(y, y64),
    }
    out_dir = Path(out_dir) / "diffusers"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    for k in y:
        print(f"diffusers {k}: std {y[k].std():.3f}, own float32 error {(y[k].double() - y64[k]).abs().max():.3g}, "
              f"change from base {(y[k] - y['base']).abs().max():.3g}")
    print(f"{path}: {path.stat().st_size / 1e3:.0f} KB")


if __name__ == "__main__":
    here = Path(__file__).parent
    if "--diffusers" not in sys.argv:  # --diffusers: only the diffusers case
        check_sized_controlnet()
        generate(here / "testdata" / "controlnet", TINY, TINY_COND, (2, 4, 8, 12), tokens=5, timestep=250)
    generate_diffusers(here / "testdata" / "controlnet")
