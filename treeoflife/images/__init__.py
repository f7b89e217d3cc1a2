"""Images: fetch work units (`fetch.py`) and their downloads (`download.py`: host throttle,
retries, robots opt-out), staging tars (`staging.py`), one-pass decode/resize/encode
(`transform.py`), perceptual hashes (`phash.py`), worker warm-up (`prewarm.py`),
duplicates (`dedup.py`) and eval leakage (`leakage.py`)."""
