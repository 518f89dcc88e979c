"""The ReID weights reidcam ships (model card: MODEL_CARD.md beside this file)."""

from pathlib import Path

DEFAULT_REID_WEIGHTS = Path(__file__).resolve().with_name("reidmamba_default.pt")
DEFAULT_REID_MODEL = "reidmamba_tiny"
# What a recipe's ``model.init_from`` may say instead of a path, to fine-tune from these weights.
SHIPPED_WEIGHTS_ALIAS = "shipped"
