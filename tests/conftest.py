from mlflow_fixtures import embedded_store, mlflow_server, server_store, tiny_stages  # noqa: F401
