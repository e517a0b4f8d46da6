"""A view: panels of JSON data drawn by mindscope's own inline script, as self-contained HTML.

The HTML of a view is one ``<div class="ms-view">`` holding its CSS, its data (a JSON
``<script>`` block) and its script (``static/views.js``, inlined), so it needs no network and
no files: it works as a Jupyter output (JupyterLab, classic Notebook, VS Code) and as a saved
page. Each rendering gets a fresh element id, so two views in one page, or one view displayed
twice, never collide.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
import uuid
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .._files import create_temp_beside
from ..errors import StorageError


@lru_cache(maxsize=None)
def _static(name: str) -> str:
    text = resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")
    # A literal "</" would end the inline <script>/<style> element early.
    return text.replace("</", "<\\/")


def _json_for_script(data: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` are written as
    ``\\u003c`` etc., so a token such as ``"</script>"`` stays text."""
    from ..experiments._result import to_jsonable

    text = json.dumps(to_jsonable(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class View:
    """Interactive panels as self-contained HTML.

    In Jupyter a view displays itself (``_repr_html_``); ``show()`` displays it there or, outside
    Jupyter, writes it to a temporary ``.html`` file and says where; ``to_html(path)`` saves a
    standalone page.
    """

    def __init__(self, title: str, panels: list[dict[str, Any]]):
        self.title = title
        self.panels = panels

    def __repr__(self) -> str:
        kinds = ", ".join(p["kind"] for p in self.panels)
        return f"View({self.title!r}, panels: {kinds})"

    def html(self) -> str:
        """The view as an HTML fragment (a ``<div>``) with a new unique element id."""
        view_id = f"ms-view-{uuid.uuid4().hex}"
        data = _json_for_script({"panels": self.panels})
        return (
            f'<div class="ms-view" id="{view_id}">'
            f"<style>{_static('views.css')}</style>"
            f'<div class="ms-heading">{html.escape(self.title)}</div>'
            '<div class="ms-noscript">This interactive view needs JavaScript: in Jupyter, run the cell '
            "(or trust the notebook); a saved page needs a browser with scripts on.</div>"
            f'<script type="application/json" class="ms-data">{data}</script>'
            f"<script>(function () {{\n{_static('views.js')}\n"
            f"render(document.getElementById({json.dumps(view_id)}));\n}})();</script>"
            "</div>"
        )

    def _repr_html_(self) -> str:
        return self.html()

    def page(self) -> str:
        """A complete HTML document holding the view."""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title></head>\n<body>{self.html()}</body></html>\n"
        )

    def to_html(self, path: str | os.PathLike[str]) -> str:
        """Write the view as a standalone page (written beside ``path`` and renamed into place);
        returns the path."""
        out = Path(path)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = create_temp_beside(out)
        except OSError as e:
            raise StorageError(f"cannot write the view to {out}: {e}") from e
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.page())
            os.replace(tmp, out)
        except OSError as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise StorageError(f"cannot write the view to {out}: {e}") from e
        return str(out)

    def show(self) -> str | None:
        """Display in Jupyter; elsewhere write a temporary HTML file, print its path and return it."""
        if _in_jupyter():
            from IPython.display import display

            display(self)
            return None
        fd, path = tempfile.mkstemp(prefix="mindscope-view-", suffix=".html")
        os.close(fd)
        self.to_html(path)
        print(f"mindscope: view written to {path} (open it in a browser)")
        return path


def _in_jupyter() -> bool:
    """True inside a Jupyter kernel (Lab, Notebook, VS Code), not in a terminal IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
