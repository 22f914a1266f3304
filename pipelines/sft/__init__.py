"""The instruction-tuning pipeline: ``build(cfg)``; compiled to ``pipeline.yaml`` here."""
