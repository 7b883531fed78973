"""Golden vectors for specs/vit.yaml: the Vision Transformer of Refiners'
README, built with refiners.fluxion layers in the same arrangement.

    conformance/.venv/bin/python conformance/generate_vit.py [--full]

Tiny (committed): 32 px images, 8 px patches, width 16, 2 layers, 2 heads.
Full (--full, testdata/full): ViT-B/16 at 224 px, the spec's defaults.
"""

import sys
import time
from pathlib import Path

import refiners
import refiners.fluxion.layers as fl
import torch

from golden import float64_twin, save_spec_case, tree_print, upcast


def vit(embedding_dim, patch_size, image_size, num_layers, num_heads):
    patches = image_size // patch_size
    mlp = lambda: (fl.Linear(embedding_dim, embedding_dim * 4), fl.GeLU(), fl.Linear(embedding_dim * 4, embedding_dim))

    class ViT(fl.Chain):  # the root's class name is its type name in the tree
        pass

    return ViT(
        fl.Conv2d(3, embedding_dim, kernel_size=patch_size, stride=patch_size),
        fl.Reshape(patches * patches, embedding_dim),
        fl.Residual(fl.Parameter(patches * patches, embedding_dim)),
        *(
            fl.Chain(
                fl.LayerNorm(embedding_dim),
                fl.Residual(
                    fl.Parallel(fl.Identity(), fl.Identity(), fl.Identity()),
                    fl.Attention(embedding_dim, num_heads=num_heads, key_embedding_dim=embedding_dim, value_embedding_dim=embedding_dim),
                ),
                fl.LayerNorm(embedding_dim),
                fl.Residual(*mlp()),
                fl.Chain(*mlp()),
            )
            for _ in range(num_layers)
        ),
        fl.Reshape(embedding_dim, patches, patches),
    )


def generate(name, out_dir, params, batch):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = vit(**params).eval()
    with torch.no_grad():
        for key, t in sorted(model.state_dict().items()):
            fan_in = t[0].numel() if t.dim() > 1 else 1
            t.copy_(torch.randn(t.shape, generator=gen) / max(fan_in, 1) ** 0.5)
    x = torch.randn(batch, 3, params["image_size"], params["image_size"], generator=gen)
    start = time.perf_counter()
    with torch.no_grad():
        y = model(x)
    took = time.perf_counter() - start
    with torch.no_grad():
        y64 = float64_twin(model)(upcast(x))
    save_spec_case(out_dir, name, spec="specs/vit.yaml", overrides={k: str(v) for k, v in params.items()}, model=model,
                   inputs={"input.0": x}, outputs=[y], outputs64=[y64], reference="refiners 0.4.0 layers", tree=tree_print(model))
    print(f"{name}: forward {took:.3f}s, output {tuple(y.shape)}, own float32 error {(y.double() - y64).abs().max():.3g}")


if __name__ == "__main__":
    here = Path(__file__).parent
    if "--full" in sys.argv:
        generate("vit_full", here / "testdata" / "full",
                 dict(embedding_dim=768, patch_size=16, image_size=224, num_layers=12, num_heads=12), batch=1)
    else:
        generate("vit_tiny", here / "testdata" / "specs",
                 dict(embedding_dim=16, patch_size=8, image_size=32, num_layers=2, num_heads=2), batch=2)
