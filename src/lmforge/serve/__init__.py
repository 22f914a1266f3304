"""After promotion: sample the LM, serve a registered model locally, deploy champions to KServe.

- :mod:`~lmforge.serve.generate`: ``lmforge generate`` and the evaluate stage's samples (one path).
- :mod:`~lmforge.serve.server`: ``lmforge serve``, MLflow's scoring server on 127.0.0.1.
- :mod:`~lmforge.serve.kserve`: the KServe ``InferenceService`` of a registered version.
- :mod:`~lmforge.serve.deploy`: ``lmforge deploy --render/--apply`` (create or patch, wait Ready).
"""
