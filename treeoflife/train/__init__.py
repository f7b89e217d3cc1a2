"""The bundled BioCLIP-style trainer: webdataset loader, training loop, checkpoints."""
