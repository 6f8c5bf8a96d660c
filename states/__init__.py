"""The FeatureCloud states of the app: orchestration and communication only, no ML code.

``register_states(app, Folders(input_dir, output_dir), StatusBoard())`` puts them on an engine
``App``: the engine's process-wide ``app`` in a container (``main.py``), or one ``App`` per site
when several sites share a process. Each state calls the ``app.site.Site`` methods (through
``app.folds.Folds``, one site's cross-validation folds) and moves their results between sites with
the engine's send/await calls, and publishes the site's progress on its board (``web.status``:
what its /web page shows).

- ``base.py``: what every state shares (folders, board, the site, progress, one round's exchange,
  privacy settings handed to the engine, user mistakes as one log line)
- ``kd.py``: the states themselves, one per phase of the run
"""
from states.base import Folders
from states.kd import register_states

__all__ = ["Folders", "register_states"]
