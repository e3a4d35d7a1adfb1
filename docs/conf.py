"""Sphinx settings for procpool's documentation site: Markdown pages (MyST), Furo.

Build it as CI does: `pip install -e '.[docs]' && sphinx-build -W -n -b html docs /tmp/site`
(-W: every warning, a broken link or a page left out of the table of contents among
them, fails the build).
"""

from __future__ import annotations

project = "procpool"
author = "procpool's developers"
copyright = "procpool's developers"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Anchors for headings down to ###, so that `page.md#a-heading` links resolve and are checked.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

html_theme = "furo"
html_title = "procpool"
# Code shown in the docs is pasted from real runs: no highlighter may reject it.
highlight_language = "none"
