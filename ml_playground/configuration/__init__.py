from ml_playground.configuration.loading import experiment_config_path, list_experiments, load_config
from ml_playground.configuration.models import ExperimentConfig

__all__ = ["ExperimentConfig", "experiment_config_path", "list_experiments", "load_config"]
