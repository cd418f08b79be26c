"""Executes the notebooks headless against a data root and prints what each
one reports for checking, as one JSON object keyed by notebook file name.

    KAIROS_DATA=kairos-demo/data python notebooks/run.py [--out DIR] [NOTEBOOK ...]

A failing cell stops the run with the cell and its error, exit code 1. With
--out, the executed notebooks (outputs included) are written to DIR.
The test command runs this (tests/e2e/analysts.rs) and compares the numbers
with `kairos sql` and `kairos report`.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
MARK = "KAIROS_RESULTS "


def results(nb) -> dict:
    """The JSON a notebook prints after MARK (its last such line)."""
    found = None
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                for line in out.get("text", "").splitlines():
                    if line.startswith(MARK):
                        found = json.loads(line[len(MARK):])
    if found is None:
        raise SystemExit("no KAIROS_RESULTS line: the notebook's last cell must print one")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, help="write the executed notebooks here")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    args = parser.parse_args()
    paths = args.notebooks or sorted(HERE.glob("*.ipynb"))
    # Kernels run in the notebook's folder: a relative root means the caller's.
    if "KAIROS_DATA" in os.environ:
        os.environ["KAIROS_DATA"] = os.path.abspath(os.environ["KAIROS_DATA"])
    report = {}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb, timeout=args.timeout, kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        try:
            client.execute()
        except CellExecutionError as e:
            print(f"{path.name}: a cell failed:\n{e}", file=sys.stderr)
            return 1
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, args.out / path.name)
        report[path.name] = results(nb)
    print(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
