"""Encrypted serving as a service: two compute servers and a dealer that stay up, a
model deployed once, and clients (not parties of the cluster) that come and go.

``config``   the ``[serving]`` table of the cluster file
``channel``  client <-> party TLS 1.3 connections on the cluster's key format
``store``    each party's deployment on disk (atomic, 0600, no pickle)
``model``    the service's placement; the owner's and clients' secret sharing
``node``     one serving party: client listener, batching, the lock-step secure runs
``client``   the protocol-neutral client: predict, deploy, status
``stats``    counters and latency percentiles

Nothing here imports a backend or a front end; ``node`` takes a ``SecureBackend``.
"""
