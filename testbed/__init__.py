"""Local test-bed: plays the FeatureCloud controller for a federation of local clients, beside the
app's core, not part of it (``python main.py simulate``).

    result = run_federation([Path("c1"), Path("c2")], Path("generic"), Path("results"), Path("main.py"))

It speaks only the controller's HTTP protocol to each client, so it knows nothing about the app it
drives: clients are local processes (``launcher.py``) or containers (``docker.py``).

- ``controller.py``: one run: start, set up and poll the clients, route their data, stop them
- ``routing.py``: where each item goes (broadcast, to the coordinator, direct; SMPC sums, DP noise)
- ``privacy.py``: what the controller does to SMPC and DP payloads
- ``client_api.py``: the HTTP calls of the protocol; ``sites.py``: every client's folders
- ``logs.py``: a failed client's message from its log; ``cli.py``: the ``simulate`` command
"""
from testbed.controller import FederationResult, Timeouts, run_federation
from testbed.launcher import ClientHandle, ClientSpec, Launcher, LocalProcessLauncher
from testbed.routing import Delivery
from testbed.sites import UsageError

__all__ = ["ClientHandle", "ClientSpec", "Delivery", "FederationResult", "Launcher", "LocalProcessLauncher",
           "Timeouts", "UsageError", "run_federation"]
