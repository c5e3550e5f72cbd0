"""Generated gRPC stubs of proto/*.proto.

The *_pb2*.py files are produced by parsl_plugin/generate_stubs.py
('make python') and are not committed.
"""
