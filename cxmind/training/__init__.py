"""Training: thin TRL subclasses (SFT, GRPO), the curriculum sampler, recipes and the multi-stage pipeline.

Import from the submodules (``cxmind.training.grpo`` ...) or from here; importing this package
imports TRL.
"""

from cxmind.training.curriculum import CurriculumSampler
from cxmind.training.data import DataSource, load_training_data
from cxmind.training.grpo import CXMindGRPOConfig, CXMindGRPOTrainer
from cxmind.training.pipeline import StageResult, run_pipeline
from cxmind.training.recipe import PeftSettings, Recipe, RecipeError, StageSpec, load_recipe
from cxmind.training.sft import CXMindSFTConfig, CXMindSFTTrainer, CXMindVisionCollator, SequenceTooLongError

__all__ = [
    "CXMindGRPOConfig",
    "CXMindGRPOTrainer",
    "CXMindSFTConfig",
    "CXMindSFTTrainer",
    "CXMindVisionCollator",
    "CurriculumSampler",
    "DataSource",
    "PeftSettings",
    "Recipe",
    "RecipeError",
    "SequenceTooLongError",
    "StageResult",
    "StageSpec",
    "load_recipe",
    "load_training_data",
    "run_pipeline",
]
