"""The DICOM gateway: a hospital's PACS sends CT studies by C-STORE; each complete study (all its
series) becomes one content-addressed zip under ``ingest/``; a DONE hospital job's SEG and SR go back
by C-STORE.

A deployable of its own (its container image: ``requirements/gateway.txt``) over the core ``ichseg``
and ``ichseg.pipeline`` (the job store, the bucket's key layout). Start it with ``ichseg gateway``,
``python -m gateway`` or :class:`gateway.service.GatewayService`.
"""
