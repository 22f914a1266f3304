"""Image-text pairs: reading captioned images (``sources``), turning each into a clean stored
copy (``store``), the validate step (``validate``), the seeded augmentation (``augment``) and
the reader of the validated layout that the multimodal model stages use (``pairs``)."""
