"""Training: a config dataclass, the Trainer (single process or torchrun/DDP) and checkpoints.

    from gatedrnn.train import TrainConfig, Trainer
    result = Trainer(TrainConfig(task="adding", cell="lstm", out_dir="runs/adding")).fit()
    model, config, task = load_model("runs/adding")          # the best checkpoint
"""
from gatedrnn.train.checkpoint import CheckpointError, load_model, save_checkpoint
from gatedrnn.train.config import ConfigError, TrainConfig, load_config_file, merge_config, validate
from gatedrnn.train.evaluation import evaluate_split, predict_split
from gatedrnn.train.schedule import lr_factor
from gatedrnn.train.trainer import TrainingError, TrainResult, Trainer

__all__ = ["CheckpointError", "ConfigError", "TrainConfig", "TrainResult", "Trainer", "TrainingError", "evaluate_split",
           "load_config_file", "load_model", "lr_factor", "merge_config", "predict_split", "save_checkpoint",
           "validate"]
