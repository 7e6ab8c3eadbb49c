"""Showing a plotly Figure in a notebook widget and pushing later changes of it to the front-end."""
from __future__ import annotations

from typing import Sequence


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - ipywidgets ships with the viz extra
        raise ImportError("the interactive controls need ipywidgets: pip install 'ptuning_lab[viz]'. The figures "
                          "themselves (.map_figure, .table_figure, .figure) work without it.") from err
    return ipywidgets


def _trace_json(trace) -> dict:
    d = trace.to_plotly_json()
    d.pop("type", None)
    d.pop("uid", None)
    return d


# what callbacks change: copying only these keeps a refresh cheap (plotly validates every property)
DATA_KEYS = ("x", "y", "z", "text", "hovertext", "customdata", "opacity", "name")


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class FigureView:
    """Shows a Figure in a widget and pushes later changes of it to the front-end.

    ``FigureWidget`` (needs anywidget): :meth:`refresh` copies only the listed traces' data keys
    and layout properties. Without anywidget: an ``ipywidgets.Output`` in which the figure is
    drawn again (only inside a Jupyter kernel; elsewhere there is nothing to draw on).
    """

    def __init__(self, fig):
        widgets = _ipywidgets()
        self.figure = fig
        try:
            import anywidget  # noqa: F401  (plotly's FigureWidget is built on it)
            import plotly.graph_objects as go

            self.widget = go.FigureWidget(fig)
            self.kind = "figurewidget"
        except ImportError:
            self.widget = widgets.Output()
            self.kind = "output"
            self.refresh()

    def refresh(self, traces: Sequence[int] | None = None, layout: Sequence[str] = (),
                keys: Sequence[str] = DATA_KEYS) -> None:
        """Push the ``keys`` of ``traces`` (all when None) and the ``layout`` properties (paths like
        ``"xaxis.range"``) of ``self.figure`` to the shown widget."""
        if self.kind == "figurewidget":
            fw = self.widget
            with fw.batch_update():
                for i in range(len(fw.data)) if traces is None else traces:
                    src = self.figure.data[i]
                    fw.data[i].update({k: src[k] for k in keys if k in src and src[k] is not None})
                for key in layout:
                    fw.layout[key] = self.figure.layout[key]
        elif _in_kernel():
            from IPython.display import clear_output, display

            with self.widget:
                clear_output(wait=True)
                display(self.figure)
