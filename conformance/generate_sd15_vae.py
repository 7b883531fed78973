"""Golden vectors for specs/sd15_vae_encoder.yaml and specs/sd15_vae_decoder.yaml:
the Stable Diffusion 1.5 autoencoder of Refiners
(refiners.foundationals.latent_diffusion.auto_encoder: Encoder, Decoder, and
SD1Autoencoder.encode/decode for the latent scale).

    conformance/.venv/bin/python conformance/generate_sd15_vae.py [--full]

Tiny (committed): level widths 8/16/20/20 and 4 GroupNorm groups (SD's
pattern of widths, small enough for files under 500 KB), images 2x3x32x32,
latents 2x4x4x4; and "scaled_tiny", widths 4/8/8/8 and 2 groups with
scale_latents=1, checked against SD1Autoencoder.encode / .decode.
Full (--full, testdata/full): Refiners' own Encoder() and Decoder() (widths
128/256/512/512, 32 groups) on 1x3x512x512 images and 1x4x64x64 latents.

Refiners' Encoder and Decoder hard-code their widths, so the tiny models are
built here from Refiners' layers in the same arrangement (`encoder`,
`decoder` below); at the real widths that arrangement is checked to give
exactly the tree and state dict of Refiners' own classes, so the tiny models
are the same architecture scaled down.

The spec trees contain Lambda layers (Downsample's zero padding,
SelfAttention2d's reshapes, Upsample's static shape), so no `tree` is stored.
"""

import sys
import time
from pathlib import Path

import refiners.fluxion.layers as fl
import torch
from refiners.foundationals.latent_diffusion.auto_encoder import Decoder, Encoder, Resnet
from refiners.foundationals.latent_diffusion.stable_diffusion_1.model import SD1Autoencoder

from golden import float64_twin, save_spec_case, tree_print, upcast


def mid_block(c, groups):
    return fl.Chain(
        Resnet(c, c, num_groups=groups),
        fl.Residual(fl.GroupNorm(channels=c, num_groups=groups, eps=1e-6), fl.SelfAttention2d(channels=c)),
        Resnet(c, c, num_groups=groups),
    )


def out_block(c, out, groups):
    return fl.Chain(
        fl.GroupNorm(channels=c, num_groups=groups, eps=1e-6),
        fl.SiLU(),
        fl.Conv2d(c, out, kernel_size=3, padding=1),
    )


def encoder(widths, groups):
    """Refiners' Encoder at the given level widths (the last one also the middle block's)."""
    levels = []
    for i, c in enumerate(widths):
        prev = widths[i - 1] if i > 0 else c
        level = fl.Chain(Resnet(prev, c, num_groups=groups), Resnet(c, c, num_groups=groups))
        if i < len(widths) - 1:
            level.append(fl.Downsample(channels=c, scale_factor=2))
        levels.append(level)
    levels.append(mid_block(widths[-1], groups))
    enc = Encoder.__new__(Encoder)  # keeps Encoder's name and its sampling context
    fl.Chain.__init__(
        enc,
        fl.Conv2d(3, widths[0], kernel_size=3, padding=1),
        fl.Chain(*levels),
        out_block(widths[-1], 8, groups),
        fl.Chain(fl.Conv2d(8, 8, kernel_size=1), fl.Slicing(dim=1, end=4)),
    )
    return enc


def decoder(widths, groups):
    """Refiners' Decoder for an encoder of the given level widths."""
    rev = widths[::-1]
    levels = [mid_block(rev[0], groups)]
    for i, c in enumerate(rev):
        prev = rev[i - 1] if i > 0 else c
        level = fl.Chain(*(Resnet(prev if j == 0 else c, c, num_groups=groups) for j in range(3)))
        if i < len(rev) - 1:
            level.append(fl.Upsample(channels=c, upsample_factor=2))
        levels.append(level)
    dec = Decoder.__new__(Decoder)
    fl.Chain.__init__(
        dec,
        fl.Conv2d(4, 4, kernel_size=1),
        fl.Conv2d(4, rev[0], kernel_size=3, padding=1),
        fl.Chain(*levels),
        out_block(rev[-1], 3, groups),
    )
    return dec


def check_same_as_refiners():
    """The builders above at SD's widths are Refiners' own Encoder and Decoder."""
    for mine, theirs in ((encoder([128, 256, 512, 512], 32), Encoder()), (decoder([128, 256, 512, 512], 32), Decoder())):
        assert tree_print(mine) == tree_print(theirs), type(theirs).__name__
        a, b = mine.state_dict(), theirs.state_dict()
        assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a), type(theirs).__name__


def randomize(model, gen):
    """Every parameter seeded: weights ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.2²), biases ~ N(0, 0.1²)."""
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=gen) / t[0].numel() ** 0.5)
            elif "GroupNorm" in key and key.endswith("weight"):
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))


def write(name, out_dir, spec, overrides, model, x, y, y64, took):
    path = save_spec_case(out_dir, name, spec=spec, overrides=overrides, model=model, inputs={"input.0": x}, outputs=[y],
                          outputs64=[y64], reference="refiners 0.4.0 (latent_diffusion.auto_encoder)")
    print(f"{name}: forward {took:.2f}s, {tuple(x.shape)} -> {tuple(y.shape)}, |y| max {y.abs().max():.3g}, "
          f"own float32 error {(y.double() - y64).abs().max():.3g}, {path.stat().st_size / 1e3:.0f} KB")


def case(name, out_dir, half, model, x, overrides, method=None):
    """method: "encode" or "decode" runs the half through SD1Autoencoder's
    scaling method instead of calling it directly."""
    gen = torch.Generator().manual_seed(1)
    randomize(model, gen)
    model.eval()
    run = (lambda m: scaled(m, method)) if method else (lambda m: m)
    twin = float64_twin(model)  # before scaled() gives model a parent
    start = time.perf_counter()
    with torch.no_grad():
        y = run(model)(x)
    took = time.perf_counter() - start
    with torch.no_grad():
        y64 = run(twin)(upcast(x))
    write(name, out_dir, f"specs/sd15_vae_{half}.yaml", overrides, model, x, y, y64, took)


def scaled(model, method):
    """SD1Autoencoder.encode (which runs self[0]) or .decode (self[1]) over the given half."""
    ae = SD1Autoencoder.__new__(SD1Autoencoder)
    fl.Chain.__init__(ae, *((model, fl.Identity()) if method == "encode" else (fl.Identity(), model)))
    return getattr(ae, method)


if __name__ == "__main__":
    here = Path(__file__).parent
    torch.manual_seed(0)
    if "--full" in sys.argv:
        out = here / "testdata" / "full"
        gen = torch.Generator().manual_seed(2)
        image = torch.rand(1, 3, 512, 512, generator=gen) * 2 - 1
        latents = torch.randn(1, 4, 64, 64, generator=gen)
        case("sd15_vae_encoder_full", out, "encoder", Encoder(), image, {})
        case("sd15_vae_decoder_full", out, "decoder", Decoder(), latents, {})
    else:
        check_same_as_refiners()
        out = here / "testdata" / "specs"
        gen = torch.Generator().manual_seed(2)
        image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
        latents = torch.randn(2, 4, 4, 4, generator=gen)
        for suffix, widths, groups, scale in (("tiny", [8, 16, 20, 20], 4, False), ("scaled_tiny", [4, 8, 8, 8], 2, True)):
            sizes = {f"channels_{i + 1}": str(c) for i, c in enumerate(widths)} | {"num_groups": str(groups)}
            if scale:
                sizes["scale_latents"] = "1"
            enc, dec = encoder(widths, groups), decoder(widths, groups)
            case(f"sd15_vae_encoder_{suffix}", out, "encoder", enc, image, sizes, "encode" if scale else None)
            case(f"sd15_vae_decoder_{suffix}", out, "decoder", dec, latents, sizes, "decode" if scale else None)
