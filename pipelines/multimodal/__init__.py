"""The image-text pipeline: ``build(cfg)``; compiled to ``pipeline.yaml`` here."""
