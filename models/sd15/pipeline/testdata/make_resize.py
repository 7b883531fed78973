"""Writes the resize cases of image_test.go: a random RGB image and PIL's
Image.resize of it (the default filter, bicubic) to several sizes.

    conformance/.venv/bin/python models/sd15/testdata/make_resize.py
"""
from pathlib import Path

import numpy as np
from PIL import Image

here = Path(__file__).parent
rng = np.random.default_rng(7)
src = Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8))
src.save(here / "resize_src.png")
for w, h in [(64, 48), (16, 11), (37, 50), (20, 23), (5, 3), (111, 69)]:
    src.resize((w, h)).save(here / f"resize_{w}x{h}.png")
# PIL's convert("L") of the same image, for the mask conversion.
src.convert("L").save(here / "gray_src.png")
