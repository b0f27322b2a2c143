"""Who may talk to whom: each party's key pair, pinned in the cluster file, and the
authenticated, encrypted channels built on it.

``keys`` makes and loads the key material (one ECDSA P-256 key and a self-signed
X.509 certificate naming the party, per party); ``channel`` is the handshake and AEAD
framing the gloo transport uses (gRPC uses TLS 1.3 with the same certificates);
``rendezvous`` is the mutually authenticated TLS store torch-spdz's parties meet at.
Nothing here imports a backend or a framework.
"""
