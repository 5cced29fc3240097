"""Evaluation of generative models.

- ``features``: the FID Inception-v3 and a data set's own classifier as feature extractors;
- ``metrics``: FID / KID / IS (torchmetrics, fed precomputed features), k-NN precision/recall,
  classifier confidence and class entropy;
- ``reference``: reference statistics and default classifiers, cached under ``$DDPM_CACHE``;
- ``samples``: seeded generation in batches, and reading samples.npz / image folders;
- ``report``: named metrics for ``ddpm evaluate``; ``classifier``: the small CNN and its training.
"""
