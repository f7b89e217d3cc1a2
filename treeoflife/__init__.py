"""treeoflife: build, audit, publish and train on TreeOfLife-style biology image datasets."""

__version__ = "0.1.0"
