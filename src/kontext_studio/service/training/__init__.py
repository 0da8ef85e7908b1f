"""LoRA training as a service job: the service, the store of runs and LoRAs, the runner, and LoRA inputs."""

from kontext_studio.service.training.runner import TrainingRunner, build_training, pipeline_factory_for

__all__ = ["TrainingRunner", "build_training", "pipeline_factory_for"]
