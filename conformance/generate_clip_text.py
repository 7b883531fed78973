"""Golden vectors for specs/clip_text.yaml: Refiners' CLIP text encoder
(refiners.foundationals.clip.text_encoder) fed token ids.

    conformance/.venv/bin/python conformance/generate_clip_text.py [--full]

Tiny (committed): CLIPTextEncoder(embedding_dim=32, max_sequence_length=16,
vocabulary_size=100, num_layers=2, num_attention_heads=4, feedforward_dim=128,
use_quick_gelu=True) on random token ids.
Full (--full, testdata/full): CLIPTextEncoderL(), the spec's defaults, on the
ids its own CLIPTokenizer makes for two prompts.

Refiners' encoder takes text: its first child is a CLIPTokenizer, then come
Converter(set_dtype=False), the embeddings, the transformer layers and the
final LayerNorm. The spec starts at the Converter, so the reference here is
the same encoder with the tokenizer popped off: a CLIPTextEncoder chain whose
forward takes int64 token ids [batch, sequence] and runs exactly the modules
the text path runs after tokenizing. The state-dict keys are unchanged (the
tokenizer has no parameters and its removal renames no sibling).
"""

import importlib.metadata
import sys
import time
from pathlib import Path

import refiners.fluxion.layers as fl
import torch
from refiners.foundationals.clip.text_encoder import CLIPTextEncoder, CLIPTextEncoderL
from refiners.foundationals.clip.tokenizer import CLIPTokenizer

from golden import float64_twin, save_spec_case, tree_print

SPEC = "specs/clip_text.yaml"

TINY = dict(
    embedding_dim=32,
    max_sequence_length=16,
    vocabulary_size=100,
    num_layers=2,
    num_attention_heads=4,
    feedforward_dim=128,
)
FULL = dict(
    embedding_dim=768,
    max_sequence_length=77,
    vocabulary_size=49408,
    num_layers=12,
    num_attention_heads=12,
    feedforward_dim=3072,
)
PROMPTS = ["a photograph of an astronaut riding a horse", ""]


def without_tokenizer(encoder):
    """The encoder minus its tokenizer: it now takes token ids."""
    tokenizer = encoder.pop(0)
    assert isinstance(tokenizer, CLIPTokenizer), type(tokenizer)
    assert isinstance(encoder[0], fl.Converter) and not encoder[0].set_dtype
    return encoder


def randomize(model, gen):
    """Every floating parameter gets seeded random values, scaled so that
    activations stay O(1): embeddings ~N(0, 1), linear weights ~N(0, 1/fan_in),
    biases ~N(0, 0.1²), LayerNorm scales ~1 + N(0, 0.1²) and shifts ~N(0, 0.1²)."""
    with torch.no_grad():
        for key, t in sorted(model.state_dict().items()):
            assert t.is_floating_point(), key
            noise = torch.randn(t.shape, generator=gen)
            if "LayerNorm" in key and key.endswith(".weight"):
                t.copy_(1 + 0.1 * noise)
            elif key.endswith(".bias"):
                t.copy_(0.1 * noise)
            elif "Linear" in key:
                t.copy_(noise / t.shape[1] ** 0.5)
            else:  # TokenEncoder, PositionalEncoder.Embedding
                t.copy_(noise)


def generate(name, out_dir, full):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if full:
        params = FULL
        model = CLIPTextEncoderL()
        ids = model[0](PROMPTS)  # the model's own CLIPTokenizer: [2, 77] int64
    else:
        params = TINY
        model = CLIPTextEncoder(**TINY, use_quick_gelu=True)
        ids = torch.randint(0, TINY["vocabulary_size"], (2, TINY["max_sequence_length"]), generator=gen)
    model = without_tokenizer(model).eval()
    gelus = [m for m in model.modules() if isinstance(m, fl.GeLU)]
    assert gelus and all(g.approximation == fl.GeLUApproximation.SIGMOID for g in gelus)
    randomize(model, gen)
    assert ids.dtype == torch.int64 and ids.shape == (2, params["max_sequence_length"])
    start = time.perf_counter()
    with torch.no_grad():
        y = model(ids)
    took = time.perf_counter() - start
    with torch.no_grad():
        y64 = float64_twin(model)(ids)
    # The tree is left out: PositionalEncoder holds a Lambda, printed by
    # Refiners with its Python signature (get_position_ids(x: torch.Tensor) ->
    # torch.Tensor).
    assert "Lambda(" in tree_print(model)
    save_spec_case(out_dir, name, spec=SPEC, overrides={k: str(v) for k, v in params.items()}, model=model,
                   inputs={"input.0": ids}, outputs=[y], outputs64=[y64],
                   reference=f"refiners {importlib.metadata.version('refiners')}: {type(model).__name__} without its CLIPTokenizer")
    print(f"{name}: forward {took:.3f}s, input {tuple(ids.shape)}, output {tuple(y.shape)}, |y| max {y.abs().max():.3g}, "
          f"own float32 error {(y.double() - y64).abs().max():.3g}")


if __name__ == "__main__":
    here = Path(__file__).parent
    if "--full" in sys.argv:
        generate("clip_text_full", here / "testdata" / "full", full=True)
    else:
        generate("clip_text_tiny", here / "testdata" / "specs", full=False)
