"""``ampelios bench``: the throughput of each layer and the steady-state latency, side by side.

One run on one machine measures N generated events (``generate_events(N, seed)``); every
measurement gets a freshly started embedded broker (and, for Ampelios, its own embedded
Postgres and worker) in a temporary directory that is removed afterwards, so that no
measurement disturbs another. A configured ``AMPELIOS_BROKER`` or
``AMPELIOS_DATABASE_URL`` is not used: the bench measures the embedded stack.

=================  ====================================================================
row                what is timed
=================  ====================================================================
limit              a plain aiokafka consumer reading every message from the beginning
                   (first fetch -> last record): the replay's messages (``plan_messages``
                   + ``encode_events``, what ``ampelios replay`` sends) and, for the
                   first M events, one event per message (the single-event JSON form),
                   in event-time order as a site sends them
ceiling            a bare Faust agent that only counts the same messages
                   (:mod:`ampelios.bench.bare_faust`): its first -> last message
replay             the real stack: ``POST /trigger`` of the CSV -> ``/stats`` counts every
                   distinct event and lag 0 (the segments have them too, as ``ampelios
                   demo`` waits for); the worker's peak RSS and RocksDB bytes at the end
takeover           the real stack after the same replay: its worker SIGKILLed and a new one
                   started on the same state directory: start -> ``/health`` ok, and ->
                   ``/stats`` counts every event again with lag 0 (the row's time); the
                   changelog records the new worker read back
single             the real stack: the M one-event messages produced to ``events``
                   (keyed and partitioned as any producer would) -> ``/stats`` counts
                   them all and lag 0; as a percentage of the bare-Faust
                   one-event-per-message ceiling
steady             the real stack: one event per message (in event-time order) at R
                   events/s for S seconds, among them probe events of new visitors whose
                   ``/visitors/{id}`` is polled until it answers 200: latency = that
                   answer - produce time (and - the broker's ack, without the
                   bench's own producer)
collector          the real stack fed as a site's tracker feeds it: the steady phase's
                   events (and probes) as Segment ``track`` calls, ``POST /v1/batch``
                   every COLLECTOR_TICK_SECONDS at R events/s for S seconds; latency =
                   ``/visitors/{id}`` 200 - the call's send (and - the collector's 200,
                   which comes once the broker has the events); at the end every
                   distinct event is in ``/stats`` (nothing lost)
webhooks           the real stack at R events/s, one event per message, with a webhook
                   subscription to every segment (a receiver in this process): after a
                   warm-up (a model, each probe's first view), probes buy; latency = the
                   receiver's arrival of the probe's move - the purchase's produce time;
                   every change ``segment-changes`` holds since the subscription must
                   arrive (nothing lost). ``--receiver-down-seconds`` takes the receiver
                   down from the start of sending, and says how soon after it is back
                   everything arrived
soak               (only with ``--phases soak``) the local stack as ``ampelios up`` runs it
                   (``AMPELIOS_LOCAL_BROKER``: Apache Kafka by default) under one event per
                   message at R events/s for ``--soak-seconds`` (an hour by default),
                   new visitors all along: the memory (PSS) of its broker, Postgres (with
                   its backends) and worker at the start and every minute
=================  ====================================================================

Nothing here judges a timing. A measurement that does not finish within its timeout is
reported with what it reached, and the other phases still run.
"""
