"""Debugging and profiling: the session that records a debug job, and the rules judging it.

SageMaker Debugger's built-in rules, with their documented parameters, reimplemented
because Debugger is closed to new AWS customers and smdebug does not work with current
numpy. Standard library only except the recorder and the session (torch, psutil), so
``sagedrop rules evaluate`` judges a trace again without torch.
"""
