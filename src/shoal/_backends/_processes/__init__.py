"""The process backend: the driver's hub (pool), the children (child), the wire (protocol)."""
