import pytest

from treeoflife.licenses import canonical_license


@pytest.mark.parametrize(
    ("raw", "version", "expected"),
    [
        ("CC0", "4.0", "cc0-1.0"),
        ("CC-BY", "4.0", "cc-by-4.0"),
        ("CC-BY-NC-SA", "4.0", "cc-by-nc-sa-4.0"),
        ("CC-BY-NC-ND", "4.0", "cc-by-nc-nd-4.0"),
        ("cc-by-nc-sa-3.0", "4.0", "cc-by-nc-sa-3.0"),
        ("cc-by-2.5", "4.0", "cc-by-2.5"),
        ("cc-0-1.0", "4.0", "cc0-1.0"),
        ("cc-publicdomain", "4.0", "pdm"),
        ("public domain", "4.0", "pdm"),
        ("No known copyright restrictions", "4.0", "no-known-restrictions"),
        ("http://creativecommons.org/licenses/by-nc/4.0/", "4.0", "cc-by-nc-4.0"),
        ("https://creativecommons.org/publicdomain/zero/1.0/", "4.0", "cc0-1.0"),
        ("CreativeCommons - Attribution Non-Commercial Share-Alike", "4.0", "cc-by-nc-sa-4.0"),
        ("CC BY 3.0", "4.0", "cc-by-3.0"),
        ("All rights reserved", "4.0", "arr"),
        (None, "4.0", "arr"),
        ("something odd", "4.0", "unknown"),
    ],
)
def test_canonical_license(raw, version, expected):
    assert canonical_license(raw, version) == expected


def test_restriction_tokens_are_never_dropped():
    for raw in ("CC-BY-NC", "CC-BY-ND", "CC-BY-SA", "cc-by-nc-nd-2.0"):
        canonical = canonical_license(raw)
        for token in ("nc", "nd", "sa"):
            assert (f"-{token}" in raw.lower()) == (f"-{token}" in canonical)
