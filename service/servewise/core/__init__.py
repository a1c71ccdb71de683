"""Pure serving math: profiles, queueing prediction, simulation, optimisation.

Nothing in this package imports grpc or protobuf; it works on plain dataclasses and numpy.
"""
