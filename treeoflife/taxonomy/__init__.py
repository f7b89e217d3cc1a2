"""The taxonomy stage: authorities (GBIF, COL, iNat) loaded as catalog tables, and the
resolution of source names to the 7 ranks against them."""
