"""LoRA training as a service job: the API router, the store of runs and LoRAs, the runner, and LoRA inputs."""

from kontext_studio.service.training.router import training_router
from kontext_studio.service.training.runner import TrainingRunner, build_training, pipeline_factory_for

__all__ = ["TrainingRunner", "build_training", "pipeline_factory_for", "training_router"]
