"""What the benchmarks share: the scripts in ``tests/bench`` are arguments and a ``main()``
over these modules, and tests import from here, never from a script.

Shared helpers, one name and one unit each (CPU in seconds ``*_s``, memory in bytes unless a
name says ``*_kib`` or ``*_mib``):

- ``procs``: processes from /proc (CPU seconds, RSS, PSS, threads, listening sockets), the
  memory sampler and CPU by process group;
- ``control``: subprocesses (services, Ray), the run's Kafka topics, groups and Redis keys;
- ``fixtures``: the models (trained, untrained, exported), rendered frames and payloads, the
  champion's lifecycle events;
- ``measure``: timed calls, rates, percentiles, saturation and latency of predictions;
- ``report``: figure files under ``var/bench``, number formatting, and the tables of
  ``make bench`` (``bench_report``).

One module per benchmark holds its parts: ``bus``, ``ingest``, ``training``, ``runtimes``,
``stages`` (``bench_profile``), ``serving`` (parts (a) and (b), the tables), ``e2e``
(part (c), also used by ``bench_scale``, ``architectures`` and the regression guard) and
``architectures`` (each architecture through (a) and (c), and its headline figures).
"""
