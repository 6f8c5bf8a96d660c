"""A whole federation in one process: the algorithm the FeatureCloud states run, stated once.

    federate(sites)                             # plain FedAvg, the first site coordinating
    federate(sites, controller, write=True)     # with a stand-in for the controller, outputs written

Every payload goes through the sites' own wire form (``Site.teacher_round``/``train_round``
encode, the coordinator's ``Site.aggregate`` decodes), exactly as in a real run; only the
transport is skipped. ``controller`` plays the part of FeatureCloud's controller between them:
it receives the payloads every site sent under one memo (``norm``, ``t1``, ``r3``, as the states
name their exchanges) and returns what the coordinator gets (for SMPC their sum, for DP the
noised payloads, except ``norm``'s channel sums, which the states never noise; ``testbed.privacy``
does both as the test-bed's controller does). Benchmarks and tests use this; ``states/`` drives
the same ``Site`` methods through the engine.
"""
from __future__ import annotations

from collections.abc import Callable

from app.results import export_student, site_summary, write_outputs
from app.site import Site
from app.transport import Models

Controller = Callable[[list[object], str], object]   # (payloads of one memo, memo) → what the coordinator gets


def hand_over(payloads: list[object], memo: str) -> list[object]:
    """The controller without SMPC or DP: every payload reaches the coordinator unchanged."""
    return payloads


def federate(sites: list[Site], controller: Controller = hand_over, *, stop_after: int | None = None,
             write: bool = False) -> None:
    """Run the federation of ``sites`` (the first coordinates): surveys and run plan, the federated
    normalization if asked, federated teacher rounds, local teacher preparation, distillation rounds up
    to ``max_iter`` (or round ``stop_after``, as if the run had been interrupted there), and with
    ``write`` every site's outputs."""
    coordinator = sites[0]
    plan = coordinator.make_plan([site.survey() for site in sites])
    for site in sites:
        site.adopt_plan(plan)
    if coordinator.needs_channel_sums():
        statistics = coordinator.pool_channel_sums(controller([site.channel_sums() for site in sites], "norm"),
                                                   len(sites))
        for site in sites:
            site.adopt_normalization(statistics)
    while number := coordinator.next_teacher_round:
        teachers = _exchange(sites, [site.teacher_round() for site in sites], controller, f"t{number}")
        for site in sites:
            site.apply_teacher(teachers)
    for site in sites:
        site.prepare_teacher()
    while (number := coordinator.next_round) and (stop_after is None or number <= stop_after):
        students = _exchange(sites, [site.train_round() for site in sites], controller, f"r{number}")
        for site in sites:
            site.apply_global(students)
    if write:   # as the states do: model files first (their int8 accuracy goes into the summaries)
        exported = [export_student(site) for site in sites]
        for site, made in zip(sites[1:], exported[1:]):
            write_outputs(site, exported=made)
        write_outputs(coordinator, federation=[site_summary(site, made) for site, made in zip(sites, exported)],
                      exported=exported[0])


def _exchange(sites: list[Site], payloads: list[object], controller: Controller, memo: str) -> Models:
    """The global models of one round: the payloads through the controller to the coordinator's aggregate."""
    return sites[0].aggregate(controller(payloads, memo), sites=len(sites))
