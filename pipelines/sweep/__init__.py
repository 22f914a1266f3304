"""The sweep pipeline: ``build(cfg)``; compiled to ``pipeline.yaml`` next to this file."""
