"""Golden vectors for specs/sd15_unet.yaml: Refiners' Stable Diffusion 1.5
U-Net (SD1UNet).

    conformance/.venv/bin/python conformance/generate_sd15_unet.py [--full]

Tiny (committed, testdata/specs/sd15_unet_tiny): Refiners hard-codes the
U-Net's widths, so the tiny model is SD1UNet's own construction code
rewritten with its sizes as parameters, from Refiners' building blocks
(ResidualBlock, RangeAdapter2d, RangeEncoder, CrossAttentionBlock2d,
ResidualAccumulator, ResidualConcatenator, Downsample, Upsample). Before
using it, the script checks that at the real sizes it gives exactly
SD1UNet(in_channels=4)'s state-dict keys, shapes and tree print.
Widths 4/8/12, 2 groups, 2 heads, 8-wide text embedding of 5 tokens,
latents 2x4x8x12 (odd sizes on the way down: 12 -> 6 -> 3 -> 2).

Full (--full, testdata/full/sd15_unet_full): SD1UNet(in_channels=4) itself,
latents 1x4x64x64, text embedding 1x77x768.

Contexts: the timestep (set_timestep) and the CLIP text embedding
(set_clip_text_embedding) are stored as context.diffusion.timestep and
context.cross_attention_block.clip_text_embedding, the contexts and keys
Refiners reads them from.
"""

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import refiners
import refiners.fluxion.layers as fl
import torch
from refiners.foundationals.latent_diffusion.cross_attention import CrossAttentionBlock2d
from refiners.foundationals.latent_diffusion.range_adapter import RangeAdapter2d, RangeEncoder
from refiners.foundationals.latent_diffusion.stable_diffusion_1 import unet as sd1
from refiners.foundationals.latent_diffusion.unet import ResidualAccumulator, ResidualBlock, ResidualConcatenator

from golden import float64_twin, save_spec_case, tree_print, upcast

FULL = dict(
    in_channels=4, out_channels=4, channels_1=320, channels_2=640, channels_3=1280,
    sinusoidal_embedding_dim=320, timestep_embedding_dim=1280, clip_embedding_dim=768,
    num_heads=8, num_groups=32,
)
TINY = dict(
    in_channels=4, out_channels=4, channels_1=4, channels_2=8, channels_3=12,
    sinusoidal_embedding_dim=8, timestep_embedding_dim=16, clip_embedding_dim=8,
    num_heads=2, num_groups=2,
)


def sized_unet(p):
    """SD1UNet with every size a parameter; the class names are Refiners'
    (they make the keys), the methods (contexts, set_timestep, ...) are
    SD1UNet's own."""
    p = SimpleNamespace(**p)
    c1, c2, c3 = p.channels_1, p.channels_2, p.channels_3

    def rb(i, o):
        return ResidualBlock(in_channels=i, out_channels=o, num_groups=p.num_groups)

    class TimestepEncoder(fl.Passthrough):
        def __init__(self):
            super().__init__(
                fl.UseContext("diffusion", "timestep"),
                RangeEncoder(p.sinusoidal_embedding_dim, p.timestep_embedding_dim),
                fl.SetContext("range_adapter", "timestep_embedding"),
            )

    class CLIPLCrossAttention(CrossAttentionBlock2d):
        def __init__(self, channels):
            super().__init__(
                channels=channels, context_embedding_dim=p.clip_embedding_dim, context_key="clip_text_embedding",
                num_attention_heads=p.num_heads, num_groups=p.num_groups, use_bias=False,
            )

    ca = CLIPLCrossAttention

    class DownBlocks(fl.Chain):
        def __init__(self, in_channels):
            self.in_channels = in_channels
            super().__init__(
                fl.Chain(fl.Conv2d(in_channels, c1, kernel_size=3, padding=1)),
                fl.Chain(rb(c1, c1), ca(c1)),
                fl.Chain(rb(c1, c1), ca(c1)),
                fl.Chain(fl.Downsample(channels=c1, scale_factor=2, padding=1)),
                fl.Chain(rb(c1, c2), ca(c2)),
                fl.Chain(rb(c2, c2), ca(c2)),
                fl.Chain(fl.Downsample(channels=c2, scale_factor=2, padding=1)),
                fl.Chain(rb(c2, c3), ca(c3)),
                fl.Chain(rb(c3, c3), ca(c3)),
                fl.Chain(fl.Downsample(channels=c3, scale_factor=2, padding=1)),
                fl.Chain(rb(c3, c3)),
                fl.Chain(rb(c3, c3)),
            )

    class UpBlocks(fl.Chain):
        def __init__(self):
            super().__init__(
                fl.Chain(rb(2 * c3, c3)),
                fl.Chain(rb(2 * c3, c3)),
                fl.Chain(rb(2 * c3, c3), fl.Upsample(channels=c3)),
                fl.Chain(rb(2 * c3, c3), ca(c3)),
                fl.Chain(rb(2 * c3, c3), ca(c3)),
                fl.Chain(rb(c3 + c2, c3), ca(c3), fl.Upsample(channels=c3)),
                fl.Chain(rb(c3 + c2, c2), ca(c2)),
                fl.Chain(rb(2 * c2, c2), ca(c2)),
                fl.Chain(rb(c2 + c1, c2), ca(c2), fl.Upsample(channels=c2)),
                fl.Chain(rb(c2 + c1, c1), ca(c1)),
                fl.Chain(rb(2 * c1, c1), ca(c1)),
                fl.Chain(rb(2 * c1, c1), ca(c1)),
            )

    class MiddleBlock(fl.Chain):
        def __init__(self):
            super().__init__(rb(c3, c3), ca(c3), rb(c3, c3))

    class SD1UNet(sd1.SD1UNet):
        def __init__(self, in_channels):
            self.in_channels = in_channels
            fl.Chain.__init__(
                self,
                TimestepEncoder(),
                DownBlocks(in_channels=in_channels),
                fl.Sum(
                    fl.UseContext(context="unet", key="residuals").compose(lambda x: x[-1]),
                    MiddleBlock(),
                ),
                UpBlocks(),
                fl.Chain(
                    fl.GroupNorm(channels=c1, num_groups=p.num_groups),
                    fl.SiLU(),
                    fl.Conv2d(c1, p.out_channels, kernel_size=3, stride=1, padding=1),
                ),
            )
            # As SD1UNet.__init__ does.
            for residual_block in self.layers(ResidualBlock):
                chain = residual_block.layer("Chain", fl.Chain)
                RangeAdapter2d(
                    target=chain.layer("Conv2d_1", fl.Conv2d),
                    channels=residual_block.out_channels,
                    embedding_dim=p.timestep_embedding_dim,
                    context_key="timestep_embedding",
                ).inject(chain)
            for n, block in enumerate(self.DownBlocks):
                block.append(ResidualAccumulator(n))
            for n, block in enumerate(self.UpBlocks):
                block.insert(0, ResidualConcatenator(-n - 2))

    return SD1UNet(p.in_channels)


def check_sized_unet():
    """The parameterised copy at the real sizes is SD1UNet(in_channels=4)."""
    with torch.device("meta"):
        ours, theirs = sized_unet(FULL), sd1.SD1UNet(in_channels=4)
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert a == b, f"state dicts differ: {sorted(set(a.items()) ^ set(b.items()))[:10]}"
    assert list(a) == list(b), "state-dict key order differs"
    assert tree_print(ours) == tree_print(theirs), "tree prints differ"
    print(f"sized copy at full size matches SD1UNet(in_channels=4): {len(a)} tensors")


def randomise(model, gen):
    """Seeded weights that keep activations O(1): 1/sqrt(fan_in) for
    matrices and kernels, 1 + 0.1·N for norm scales, 0.1·N for biases."""
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=gen) / t[0].numel() ** 0.5)
            elif "Norm" in key.rsplit(".", 2)[-2] and key.endswith(".weight"):
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))


def generate(name, out_dir, params, latents_shape, tokens, timestep, model=None):
    gen = torch.Generator().manual_seed(1)
    model = (model or sized_unet(params)).eval()
    randomise(model, gen)
    batch = latents_shape[0]
    x = torch.randn(latents_shape, generator=gen)
    clip_text_embedding = torch.randn(batch, tokens, params["clip_embedding_dim"], generator=gen)
    t = torch.tensor([timestep], dtype=torch.int64)
    start = time.perf_counter()
    with torch.no_grad():
        model.set_timestep(t)
        model.set_clip_text_embedding(clip_text_embedding)
        y = model(x)
    took = time.perf_counter() - start
    with torch.no_grad():
        twin = float64_twin(model)
        twin.set_timestep(t)
        twin.set_clip_text_embedding(upcast(clip_text_embedding))
        y64 = twin(upcast(x))
    del twin
    # No tree: it holds a Lambda (RangeEncoder's sinusoidal embedding),
    # whose Python signature cannot match.
    path = save_spec_case(out_dir, name, spec="specs/sd15_unet.yaml", overrides={k: str(v) for k, v in params.items()},
                          model=model, outputs=[y], outputs64=[y64], reference="refiners 0.4.0 SD1UNet",
                          inputs={"input.0": x, "context.diffusion.timestep": t,
                                  "context.cross_attention_block.clip_text_embedding": clip_text_embedding})
    size = path.stat().st_size
    print(f"{name}: forward {took:.3f}s, output {tuple(y.shape)} std {y.std():.3f}, own float32 error {(y.double() - y64).abs().max():.3g}, "
          f"{sum(v.numel() for v in model.state_dict().values())} parameters, file {size / 1e3:.0f} KB")


if __name__ == "__main__":
    here = Path(__file__).parent
    check_sized_unet()
    if "--full" in sys.argv:
        torch.manual_seed(0)
        generate("sd15_unet_full", here / "testdata" / "full", FULL, (1, 4, 64, 64), tokens=77, timestep=999,
                 model=sd1.SD1UNet(in_channels=4))
    else:
        generate("sd15_unet_tiny", here / "testdata" / "specs", TINY, (2, 4, 8, 12), tokens=5, timestep=250)
