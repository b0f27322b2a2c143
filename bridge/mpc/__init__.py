"""Secure two-party computation with a dealer, written once against ``RingKernels``.

Modules, each with one job:
  prg         CSPRNG streams (AES-256-CTR keyed from os.urandom)
  fixedpoint  real <-> ring encoding with range checks
  wire        fixed framing of tensors on the wire (never pickle)
  comm        Communicator interface, in-memory network, byte/round accounting
  party       one party's view: its name, role, kernels, seeds, correlated randomness
  protocol    sharing, reveal, Beaver products, truncation
  compare     exact secure comparison and bit injection
  functions   ReLU, max, exp, reciprocal, sigmoid, tanh, softmax
  layers      secure forward rules per IR op
"""
