"""The detection study (issue 16): D_f flagged by a detector on the pretrained model instead of drawn from D_c,
corruptions between the three named ones, and regularity measured by a probe.

The study's own parts live here: its config section (which remflow.params includes in the one schema), the
corruptions between the three named ones, the detectors, the probe and its stages (whose unlearn stage is
remflow.stages' with a flagged D_f). docs/detection.md describes the study.
"""
