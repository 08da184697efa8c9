"""Python's cyclic garbage collector under the daemon: fewer collections, and none that walks
what lives as long as the process.

Measured on a 20,000-member SMS job (bench_sms_daemon, timed with `gc.callbacks`, a loaded
2-core machine): with the default thresholds (700, 10, 10) the collector ran ~1,700 young and
13-14 full collections, 3.0-3.3 s in all, each full one stopping the event loop 100-230 ms (a
hot alert waits behind it): a full collection walks every object the daemon holds, the
imported libraries' (phonenumbers' metadata, pydantic's schemas...) included. Objects alive
once the daemon is set up are frozen (`gc.freeze`: never scanned again), and a young
collection waits for 2,000 new container objects instead of 700: the hot path's futures,
tasks and event dicts mostly die by reference counting before one, so far fewer survive into
the older generations. Same job: about 0.25 s in some 340 collections, the longest ~14 ms.
10,000 saved ~0.1 s more but raised a 100,000-member job's peak RSS by 8-16 MB (159-167 MB
against 151, bench_big_job); with 2,000 it stayed at 151 MB.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 2_000  # new container objects between two young collections (Python: 700)


def tune() -> None:
    """Call once the daemon's code is imported and its configuration read, before it serves."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    gc.freeze()


def set_aside() -> None:
    """Call once a large job is validated, before its first chunk is stored: what is alive now
    (its members' models) is never walked by a collection.

    Each parsed member freed while the models are made balances a model in the collector's
    count of new objects, so a 100,000-member job's models all stay young: the next young
    collection walked them, 14-25 ms of the event loop just before the first SMS, and the
    next middle one as long again (bench_big_job, with `gc.callbacks`). Frozen, they cost
    nothing, and are freed as before, each when its chunk is stored. The price: cyclic
    garbage not yet collected at this moment is kept (6 objects in the daemon measured).
    """
    gc.freeze()
