"""The live page a site serves on ``/web`` while it runs (and its report at the end).

``status.StatusBoard`` is the snapshot the states publish; ``server.web_app`` serves it.
Handlers only read what was published: every figure is computed by the states' thread
(and app/) before it reaches the board, so a page request never waits for training.
"""
