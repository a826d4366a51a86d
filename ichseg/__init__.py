"""ichseg: intracranial hemorrhage segmentation in head CT.

The core library shared by the CLI, the Lambda functions, the inference server and training:
scan reading (:mod:`ichseg.scan`), windowing and model preprocessing (:mod:`ichseg.windowing`,
:mod:`ichseg.preprocess`), rendering (:mod:`ichseg.writers.render`).
"""

__version__ = "0.1.0"
