from django.apps import AppConfig


class MlflowCompatConfig(AppConfig):
    name = "apps.mlflow_compat"
    label = "mlflow_compat"
    verbose_name = "MLflow compatibility"
