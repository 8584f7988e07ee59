"""bulkresize's benchmark harness: ``python -m benchmarks --help`` or ``nox -s bench``.

Every figure it prints is a ratio to a yardstick measured in the same run, because the machines
it runs on are shared and noisy.
"""
