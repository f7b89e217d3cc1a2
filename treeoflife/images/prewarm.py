"""One-time costs of a worker's first image, paid at import: the local engine's fork
server imports this once, so every worker it forks starts warm (~0.3 s each otherwise).

Pillow registers its format plugins on the first `Image.open` with a format list, and
the exact resampler checks itself against Pillow on first use (`phash`); both are cached
for the life of the process.
"""

from __future__ import annotations

from PIL import Image

from treeoflife.images import phash

Image.init()
phash.resampler_is_exact()
