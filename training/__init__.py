"""Groundwork for training the in-house SD3 model on a procedural scene set.

Submodules:

- ``scenes``: palette, attributes, renderer, captions and the dataset generator.
- ``analyser``: reads the attributes back from an image without any model.
- ``text``: builds the CLIP BPE and T5 Unigram tokenizers from the caption corpus.
- ``build``: creates the (untrained) diffusers components of the pipeline.
- ``train_vae``, ``train_transformer``: the two training stages.
- ``evaluate``: generates a fixed evaluation set and prints attribute accuracy.
- ``run``: the whole reproduction, stage by stage; ``bench``: seconds per step of each stage;
  ``plot``: loss curves drawn with PIL.

Run ``python -m training --help`` for the command line.
"""
