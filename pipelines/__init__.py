"""KFP v2 pipelines chaining the components; ``lmforge pipeline compile`` writes their YAML."""
