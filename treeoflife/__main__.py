"""`python -m treeoflife` runs the `tol` command line."""

from treeoflife.cli import app

app(prog_name="tol")
