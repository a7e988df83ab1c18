"""Throughput of each layer and steady-state latency, side by side (issue 6): the same as
``ampelios bench``, whose options it takes (see :mod:`ampelios.bench.run`).

    python scripts/bench.py                     # 2,756,101 events, every phase
    python scripts/bench.py --events 200000 --single-events 50000 --rate 2000 --steady-seconds 15
"""

from ampelios.bench.run import main

if __name__ == "__main__":
    main()
