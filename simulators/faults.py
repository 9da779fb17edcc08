"""Ways to make a simulated station misbehave on purpose, for tests of the central system."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Faults:
    """Ways to make a station misbehave for tests (plus :meth:`Station.drop_link` and
    :meth:`Station.send_malformed`)."""

    callerror_actions: set[str] = field(default_factory=set)  # answer these CSMS CALLs with CALLERROR
    ignore_profiles: bool = False  # accept profiles, then charge as if none were set
