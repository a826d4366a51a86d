"""Readers: one module per input family, each turning bytes into a :class:`ichseg.scan.Scan`."""
