"""`tol audit`: the coverage report (reports/audit.html and reports/audit.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from treeoflife.cli.common import DEFAULT_WORKSPACE, WorkspaceOption, console, fail
from treeoflife.errors import TolError
from treeoflife.workspace import Workspace

app = typer.Typer()


@app.command("audit")
def audit_command(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    compare: Annotated[
        Path | None,
        typer.Option(
            "--compare",
            help="Another catalog to compare with: a workspace folder or its catalog.duckdb "
            "(its resolved ranks, else its source ranks) or a TreeOfLife-10M-style catalog.csv "
            "(species = "
            "epithet; train_small rows skipped). Reports taxa gained, lost and relabelled.",
        ),
    ] = None,
    reports: Annotated[
        Path | None,
        typer.Option(
            "--reports",
            help="Folder for audit.json and audit.html (default: the workspace's reports/).",
        ),
    ] = None,
    no_html: Annotated[
        bool, typer.Option("--no-html", help="Write audit.json only (skip the 5 MB HTML).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Also print the JSON figures to stdout.")
    ] = False,
) -> None:
    """Audit taxonomic coverage: records and distinct taxa per rank, resolution status per
    source and kingdom, unresolved and ambiguous names, conflicts, suspected misspellings,
    kingdom names in use; plots in a self-contained HTML page (works offline).

    Reads taxa_resolved when `tol taxa resolve` has run, else the ranks as the sources
    gave them (the report says which). The catalog is opened read-only.
    """
    from treeoflife.taxonomy.audit import audit_workspace, print_coverage_summary

    try:
        with console.status("auditing the catalog ..."):
            report = audit_workspace(
                Workspace(workspace), compare, reports_dir=reports, write_html=not no_html
            )
    except TolError as exc:
        fail(exc)
    print_coverage_summary(report.figures, console)
    for path in (report.json_path, report.html_path):
        if path is not None:
            console.print(f"wrote {path}")
    if as_json:
        print(json.dumps(report.figures, indent=2, default=str))
