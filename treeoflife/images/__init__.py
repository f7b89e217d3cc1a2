"""Images: fetch (`fetch.py`), one-pass decode/resize/encode (`transform.py`), perceptual
hashes (`phash.py`), duplicates and eval leakage (`dedup.py`)."""
