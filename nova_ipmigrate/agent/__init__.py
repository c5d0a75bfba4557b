"""The per-host agent: memfs, the sub-host page store and the fabric endpoint."""
