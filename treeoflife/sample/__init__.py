"""The bundled sample of every source (iNat21, iNat open data, BIOSCAN-1M/5M, EOL, GBIF, COL).

`files/` holds small source dumps in their exact formats, laid out like `wget --mirror`
(`<host>/<path>`); `expected.json` is their ground truth. `python -m
treeoflife.sample.generate` rewrites both (and `manifests/sample/`): `species.py` holds the
taxa, `images.py` the synthetic pictures, `inat.py`, `bioscan.py`, `eol.py` and
`authorities.py` one writer per source.
"""

from pathlib import Path

SAMPLE_FILES = Path(__file__).parent / "files"
SAMPLE_EXPECTED = Path(__file__).parent / "expected.json"
