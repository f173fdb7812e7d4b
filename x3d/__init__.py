"""x3d: X3D action recognition with MMAction2-identical test-time behaviour. No Ray in here."""
from .presets import PRESETS, Preset, get_preset, kinetics400_classes
from .model import X3D, build_model
