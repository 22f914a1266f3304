from data_fixtures import *  # noqa: F403  (fixtures listed in its __all__)
from hf_fixtures import *  # noqa: F403  (fixtures listed in its __all__)
from k8s_fake import api_server  # noqa: F401  (the fake Kubernetes API server fixture)
from mlflow_fixtures import *  # noqa: F403  (fixtures listed in its __all__)
