"""x3d: X3D action recognition that scores videos exactly as MMAction2 does. No Ray in here.

>>> import x3d
>>> model = x3d.load_model("x3d_s", checkpoint="x3d_s.pth")
>>> probs = x3d.predict_video(model, "video.mp4", preset="x3d_s", views=30)
"""

from .decode import DecodeError, RawFrames, VideoInfo, probe, read_frames
from .fusion import fold_batchnorm
from .model import X3D, build_model
from .predict import PreparedVideo, predict_clips, predict_video, prepare_views
from .presets import PRESETS, Architecture, Preset, PublishedResult, TestProtocol, ViewPlan, Weights, get_preset, kinetics400_classes, register_preset
from .protocol import clip_indices, crop_offsets, fuse_views, make_views, normalize, resize_frames, resize_frames_exact

from .checkpoints import CheckpointError, load_model
from . import checkpoints, tiny  # tiny registers the bundled self-check preset, x3d_tiny

__all__ = [name for name in dir() if not name.startswith("_")]
