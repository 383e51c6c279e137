"""The notebook's code cells run top to bottom against the current code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "explain_service_tour.ipynb"


@pytest.mark.slow
def test_notebook_cells_run() -> None:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    # IPython's display is a notebook nicety; outside a kernel the image bytes are kept as they are.
    namespace: dict = {"Image": lambda data: data}
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(line for line in cell["source"] if not line.startswith("from IPython"))
            exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    assert namespace["verify"]["identical"] is True
    assert namespace["png"].startswith(b"\x89PNG")
    assert namespace["bad"].status_code == 422
    assert namespace["explanation"]["counterfactual"]["metrics"]["validity"] == 1.0
