"""Local test-bed: plays the FeatureCloud controller for a federation of local client processes.

    result = run_federation([Path("c1"), Path("c2")], Path("generic"), Path("results"), Path("main.py"))

speaks only the controller's HTTP protocol to each client (see controller.py), so it
knows nothing about the app it drives. `cli.main` is the `simulate` command.
"""
from testbed.controller import FederationResult, Timeouts, run_federation
from testbed.launcher import ClientHandle, ClientSpec, Launcher, LocalProcessLauncher
from testbed.routing import Delivery
from testbed.sites import UsageError

__all__ = ["ClientHandle", "ClientSpec", "Delivery", "FederationResult", "Launcher", "LocalProcessLauncher",
           "Timeouts", "UsageError", "run_federation"]
