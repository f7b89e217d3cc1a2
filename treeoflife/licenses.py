"""Canonical licence ids for the licence strings the sources write.

Sources spell licences many ways (`CC-BY-NC`, `cc-by-nc-sa-3.0`, a creativecommons.org URL,
BOLD's "CreativeCommons - Attribution Non-Commercial"). Loaders map the few DISTINCT raw
values through `canonical_license` into a small table and join it, so 20M rows cost one
join, not 20M Python calls. Restriction tokens (nc, nd, sa) are never dropped.
"""

from __future__ import annotations

import re

import duckdb

_CC_CODE = re.compile(r"^cc-by((?:-nc)?(?:-nd|-sa)?)(?:-(\d+(?:\.\d+)*))?$")
_CC_URL = re.compile(r"creativecommons\.org/(licenses|publicdomain)/([a-z-]+)/(\d+(?:\.\d+)*)?")
_CC0 = {"cc0", "cc-0", "cc-0-1.0", "cc0-1.0", "cc-zero"}
_PUBLIC_DOMAIN = {"cc-publicdomain", "public domain", "pd", "pdm", "publicdomain"}
_RESERVED = {"", "none", "null", "arr", "all rights reserved", "c", "©"}

UNKNOWN = "unknown"
ALL_RIGHTS_RESERVED = "arr"


def canonical_license(raw: str | None, default_version: str = "4.0") -> str:
    """Map one raw licence value to an id like `cc-by-nc-4.0`, `cc0-1.0`, `pdm` or `arr`.

    `default_version` applies when the source omits it (iNat codes are all 4.0).
    Anything not recognised becomes `unknown`; the raw text is kept beside it.
    """
    text = (raw or "").strip().lower().replace("_", "-")
    if text in _RESERVED:
        return ALL_RIGHTS_RESERVED
    if text in _CC0:
        return "cc0-1.0"
    if text in _PUBLIC_DOMAIN:
        return "pdm"
    if text == "no known copyright restrictions":
        return "no-known-restrictions"
    url = _CC_URL.search(text)
    if url:
        kind, code, version = url.groups()
        if kind == "publicdomain":
            return "cc0-1.0" if code == "zero" else "pdm"
        return f"cc-{code}-{version or default_version}"
    code = _CC_CODE.match(text.replace(" ", "-"))
    if code:
        restrictions, version = code.groups()
        return f"cc-by{restrictions}-{version or default_version}"
    if "creative" in text or "attribution" in text:
        return _from_words(text, default_version)
    if "no rights reserved" in text:
        return "cc0-1.0"
    return UNKNOWN


def _from_words(text: str, default_version: str) -> str:
    """BOLD-style prose: 'CreativeCommons - Attribution Non-Commercial Share-Alike'."""
    squashed = re.sub(r"[^a-z0-9.]", "", text)
    tokens = "cc-by"
    if "noncommercial" in squashed:
        tokens += "-nc"
    if "noderiv" in squashed:
        tokens += "-nd"
    elif "sharealike" in squashed:
        tokens += "-sa"
    version = re.search(r"(\d+\.\d+)", text)
    return f"{tokens}-{version.group(1) if version else default_version}"


def register_license_map(
    con: duckdb.DuckDBPyConnection, table: str, column: str, default_version: str, name: str
) -> None:
    """Create temp table `name(raw, license)` for every distinct `column` value of `table`."""
    raws = [row[0] for row in con.execute(f"SELECT DISTINCT {column} FROM {table}").fetchall()]
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} (raw VARCHAR, license VARCHAR)")
    if raws:
        con.executemany(
            f"INSERT INTO {name} VALUES (?, ?)",
            [(raw, canonical_license(raw, default_version)) for raw in raws],
        )
