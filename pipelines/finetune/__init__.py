"""The finetune pipeline: ``build(cfg)``; compiled to ``pipeline.yaml`` next to this file."""
