"""tlsguard host tools (CPython): trust bundles, pins, a private CA, flashing boards."""
