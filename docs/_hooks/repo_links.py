"""mkdocs hook: a link from a page to a file of the repository outside ``docs/`` (the
runnable examples, the changelog) points at that file in the source repository instead.

Only links to files that exist are rewritten; a link to a missing file is left alone, so
``mkdocs build --strict`` still fails on it.
"""

from __future__ import annotations

import pathlib
import posixpath
import re
from typing import Any

_LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = pathlib.Path(config["docs_dir"]).resolve()
    root = docs.parent
    repo = str(config.get("repo_url") or "").rstrip("/")
    here = (docs / page.file.src_path).parent

    def rewrite(m: re.Match[str]) -> str:
        target = (here / m.group(1)).resolve()
        if docs in target.parents or not repo or not target.exists():
            return m.group(0)
        try:
            rel = target.relative_to(root)
        except ValueError:
            return m.group(0)  # outside the repository: leave it for mkdocs to report
        kind = "tree" if target.is_dir() else "blob"
        return f"]({repo}/{kind}/main/{posixpath.join(*rel.parts)}{m.group(2) or ''})"

    return _LINK.sub(rewrite, markdown)
