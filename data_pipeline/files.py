"""Files that readers never see half-written: write a temporary sibling, then rename it over the target."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: str | Path, data: dict, sort_keys: bool = True) -> None:
    """``data`` as indented JSON at ``path``; ``sort_keys=False`` keeps the dict's own key order."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=sort_keys))
    os.replace(tmp, path)
