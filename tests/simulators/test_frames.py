"""The schema-driven frame generator: its valid payloads pass the gateway's validation, each
mutation draws the CALLERROR it is meant to."""

from __future__ import annotations

import random

from gateway.ocpp.errors import OcppError
from gateway.ocpp.validation import V201, V201_STATION_ACTIONS
from simulators.frames import MUTATION_CODES, FrameFuzzer

ACTIONS = sorted(V201_STATION_ACTIONS)


def test_valid_payloads_of_every_station_action_pass_validation() -> None:
    fz = FrameFuzzer(random.Random(11))
    for i in range(2000):
        action = ACTIONS[i % len(ACTIONS)]
        V201.check_station_call(action, fz.valid(action))  # raises on any violation


def test_each_mutation_draws_its_callerror() -> None:
    fz = FrameFuzzer(random.Random(12))
    seen = set()
    for i in range(2000):
        action = ACTIONS[i % len(ACTIONS)]
        payload, kind = fz.mutated(action)
        seen.add(kind)
        try:
            V201.check_station_call(action, payload)
        except OcppError as exc:
            assert exc.code == MUTATION_CODES[kind], (action, kind, exc)
        else:
            raise AssertionError(f"{action} {kind} passed validation: {payload}")
    assert seen == set(MUTATION_CODES)
