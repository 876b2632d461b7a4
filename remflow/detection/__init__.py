"""The detection study (issue 16): D_f flagged by a detector on the pretrained model instead of drawn from D_c,
corruptions between the three named ones, and regularity measured by a probe.

Everything here is new code beside the oracle pipeline, not in it: the modules every existing stage depends
on (config.py, params.py, stages.py, data/*) are DVC code dependencies of every committed suite, and an edit
there would make hours of committed results stale. docs/detection.md describes the study.
"""
