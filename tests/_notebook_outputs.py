"""What an executed notebook carries: its figures (PNG outputs) and its printed text."""
from __future__ import annotations

import json
from pathlib import Path


def image_outputs(executed: str | Path) -> int:
    """Number of PNG outputs (figures) in an executed notebook."""
    nb = json.loads(Path(executed).read_text(encoding="utf-8"))
    return sum("image/png" in out.get("data", {}) for cell in nb["cells"] for out in cell.get("outputs", []))
