"""Serve plotly.js from the installed ``plotly`` package as ``evaluation/plotly.min.js``.

The Python package ships the exact bundle its figures expect; serving it through a finder
keeps a 4 MB vendored file out of the repository and nothing is loaded from a CDN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import CheckMessage
from django.core.files.storage import FileSystemStorage

PLOTLY_STATIC_PATH = "evaluation/plotly.min.js"
_BUNDLE_DIR = Path(plotly.__file__).resolve().parent / "package_data"


class PlotlyFinder(BaseFinder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.storage = FileSystemStorage(location=str(_BUNDLE_DIR))
        self.storage.prefix = "evaluation"  # type: ignore[attr-defined]

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> Any:
        if path != PLOTLY_STATIC_PATH:
            return [] if find_all else None
        found = str(_BUNDLE_DIR / "plotly.min.js")
        return [found] if find_all else found

    def list(self, ignore_patterns: Any) -> Any:
        yield "plotly.min.js", self.storage
