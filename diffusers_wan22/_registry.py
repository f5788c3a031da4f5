"""Make our classes visible to diffusers' generic loaders.

* `DiffusionPipeline.from_pretrained(dir)` looks the pipeline class up as ``getattr(diffusers, _class_name)``, so
  each pipeline class is also set as an attribute of the ``diffusers`` module.
* `save_pretrained` records a component's library as its class's ``__module__``, and diffusers 0.42 resolves that
  name from ``sys.modules``. Pinning ``__module__`` to the top-level package makes ``model_index.json`` say
  ``["diffusers_wan22", "<Class>"]``, which keeps working whatever our internal file layout becomes.
"""

from __future__ import annotations

import diffusers

PACKAGE = "diffusers_wan22"


def register(*classes: type, pipelines: tuple[type, ...] = ()) -> None:
    for cls in classes + pipelines:
        cls.__module__ = PACKAGE
    for cls in pipelines:
        setattr(diffusers, cls.__name__, cls)
