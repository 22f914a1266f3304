from data_fixtures import *  # noqa: F403  (fixtures listed in its __all__)
from mlflow_fixtures import *  # noqa: F403  (fixtures listed in its __all__)
