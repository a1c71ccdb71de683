"""gRPC servicers: validate the request, convert it to core objects, call the core, convert back.

Servicers never do math; the conversion modules are the only code that knows both protobuf
messages and core types.
"""

from servewise.api.servicer import ServewiseServicer

__all__ = ["ServewiseServicer"]
