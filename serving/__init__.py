"""A local stand-in for TensorFlow Serving's model server (REST + gRPC), run as ``python -m serving``."""
