"""`wan22 ui`: a local web page (Gradio) for every task the model serves, built on the pipelines and the planner.

Gradio itself is imported only when the page is built (`build_app`); see `app.py`.
"""

from .app import build_app, launch

__all__ = ["build_app", "launch"]
