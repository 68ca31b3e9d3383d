"""A generated image-caption data set: rendered scenes of shapes, each with five true captions.

``generate_dataset`` writes it in the Karpathy split format, so the demo reads it through the same
code path as a real data set. See :mod:`itmatch.synth.scenes` (what a scene is),
:mod:`itmatch.synth.render` (drawing) and :mod:`itmatch.synth.captions` (the grammar).
"""

from itmatch.synth.captions import describe
from itmatch.synth.dataset import generate_dataset
from itmatch.synth.render import render_scene
from itmatch.synth.scenes import Scene, SceneObject, sample_scene

__all__ = ["Scene", "SceneObject", "describe", "generate_dataset", "render_scene", "sample_scene"]
