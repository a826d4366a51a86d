"""What ichseg writes, beside :mod:`ichseg.readers` (what it reads).

- :mod:`~ichseg.writers.report`: ``report.json`` and its headline;
- :mod:`~ichseg.writers.outputs`: the overlay video, contact sheet, mask PNGs and plain frames;
- :mod:`~ichseg.writers.render`: overlays, captions, H.264 and PNG encoding underneath them;
- :mod:`~ichseg.writers.dicom_seg` and :mod:`~ichseg.writers.dicom_sr`: the DICOM SEG and the
  TID 1500 SR sent back to a hospital's PACS.
"""
