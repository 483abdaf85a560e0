"""The benchmark of rmsnorm against PyTorch and its peers: ``python -m bench --help``.

Modules, one role each: cases (what is measured), implementations (what is timed), inputs, correctness
(the float64 check), timing (events and the copy ceiling), latency, sweep (rms_norm's modes and
add_rms_norm's forward), model (a compiled transformer stack's training step), estimate, stamp, report
(JSON and markdown), plot (PNG). NOTES.md records each optimisation's prediction and outcome.
"""
